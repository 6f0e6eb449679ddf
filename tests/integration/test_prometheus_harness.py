"""``devtools.prometheus`` drives a real Prometheus against a corral-like HTTPS endpoint.

A tiny server stands in for a member: corral's own TLS context (``tls.server_context``, which
accepts any client certificate and leaves authorisation to the handler), a self-signed
certificate that names only ``localhost`` (as a member's certificate does not name its
address), and a fixed metrics page served at ``/1.0/metrics`` only to one trusted client
certificate. Prometheus, set up as deploy/prometheus/prometheus.yml is, must scrape it
(``up == 1``, the served value queryable); an untrusted certificate and a missing
``server_name`` must both fail, so the success is not an accident of lax checks.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from corral_shared import tls
from devtools import prometheus
from devtools.prometheus import (
    Prometheus,
    PrometheusError,
    ScrapeJob,
    TlsFiles,
    free_port,
    sample_value,
)

pytestmark = pytest.mark.real

PAGE = b"""# HELP lxd_uptime_seconds The uptime of the member.
# TYPE lxd_uptime_seconds gauge
lxd_uptime_seconds 4242.5
# HELP corral_members Members by status.
# TYPE corral_members gauge
corral_members{status="ONLINE"} 3
corral_members{status="OFFLINE"} 0
"""


class MetricsServer(ThreadingHTTPServer):
    """HTTPS on 127.0.0.1 with an ephemeral port; the TLS handshake runs in the request's
    thread, so a client that gives up mid-handshake does not stall the others."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext, trusted: str) -> None:
        super().__init__(("127.0.0.1", 0), MetricsHandler)
        self.context = context
        self.trusted = trusted  # fingerprint of the one client allowed to read
        self.requests: list[tuple[str, str]] = []  # (path with query, client fingerprint)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            conn = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client refused our certificate: that is its answer
        super().finish_request(conn, client_address)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class MetricsHandler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        der = self.connection.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        client = tls.fingerprint(der) if der else ""
        self.server.requests.append((self.path, client))
        if client != self.server.trusted:
            self._reply(403, b"not authorized\n")
        elif self.path.split("?")[0] != "/1.0/metrics":
            self._reply(404, b"not found\n")
        else:
            self._reply(200, PAGE, "text/plain; version=0.0.4")

    def _reply(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def pair(directory: Path, name: str, hosts: list[str]) -> tuple[Path, Path, str]:
    """A self-signed pair written as ``name.crt``/``name.key``, and its fingerprint."""
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    pem = tls.ensure_pair(crt, key, name, hosts)
    return crt, key, tls.fingerprint(tls.pem_to_der(pem))


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    server_crt, server_key, _ = pair(tmp_path, "server", ["localhost"])
    metrics_crt, metrics_key, _ = pair(tmp_path, "metrics", [])
    other_crt, other_key, _ = pair(tmp_path, "stranger", [])
    return {"server_crt": server_crt, "server_key": server_key, "metrics_crt": metrics_crt,
            "metrics_key": metrics_key, "other_crt": other_crt, "other_key": other_key}


@pytest.fixture
def member(certs: dict[str, Path]) -> Iterator[MetricsServer]:
    trusted = tls.fingerprint(tls.pem_to_der(certs["metrics_crt"].read_bytes()))
    server = MetricsServer(tls.server_context(certs["server_crt"], certs["server_key"]),
                           trusted)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def require_prometheus() -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("needs prometheus (apt-get install --no-install-recommends prometheus)")


def test_prometheus_scrapes_a_client_cert_https_endpoint_and_refuses_bad_tls(
        member: MetricsServer, certs: dict[str, Path], tmp_path: Path) -> None:
    require_prometheus()
    pinned = TlsFiles(certs["metrics_crt"], certs["metrics_key"], ca_file=certs["server_crt"],
                      server_name="localhost")
    jobs = [
        ScrapeJob("member", [member.address], params={"scope": ["cluster"]}, tls=pinned),
        ScrapeJob("stranger", [member.address],
                  tls=TlsFiles(certs["other_crt"], certs["other_key"],
                               ca_file=certs["server_crt"], server_name="localhost")),
        ScrapeJob("no-server-name", [member.address],
                  tls=TlsFiles(certs["metrics_crt"], certs["metrics_key"],
                               ca_file=certs["server_crt"])),
    ]
    prom = Prometheus(jobs, parent_dir=tmp_path)
    with prom:
        assert prom.dir is not None and prom.dir.is_dir()
        up = prom.wait_for('up{job="member"} == 1', timeout=60)
        assert [s["metric"]["instance"] for s in up] == [member.address]
        uptime = prom.wait_for('lxd_uptime_seconds{job="member"}')
        assert [sample_value(s) for s in uptime] == [4242.5]
        online = prom.query('corral_members{job="member", status="ONLINE"}')
        assert [sample_value(s) for s in online] == [3.0]

        down = prom.wait_for('up{job=~"stranger|no-server-name"} == 0',
                             predicate=lambda result: len(result) == 2, timeout=60)
        assert sorted(s["metric"]["job"] for s in down) == ["no-server-name", "stranger"]
        errors = {t["labels"]["job"]: t["lastError"] for t in prom.targets()}
        assert errors["member"] == ""
        assert "403" in errors["stranger"]
        assert "certificate" in errors["no-server-name"]
        # The pinned job asked for the cluster scope, through the metrics path.
        trusted = member.trusted
        assert ("/1.0/metrics?scope=cluster", trusted) in member.requests
        workdir = prom.dir

    assert prom.process is None and not workdir.exists()
    assert not processes_mentioning(str(workdir))


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (a harness's directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_failed_start_leaves_no_process_or_directory(tmp_path: Path) -> None:
    require_prometheus()
    rules = tmp_path / "broken.yml"
    rules.write_text("groups:\n  - name: broken\n    rules:\n"
                     "      - alert: Broken\n        expr: up ==\n")
    prom = Prometheus([ScrapeJob("self", ["127.0.0.1:1"], scheme="http")], rule_files=[rules],
                      parent_dir=tmp_path)
    try:
        with pytest.raises(PrometheusError) as info:
            prom.start(timeout=30)
        assert "broken.yml" in str(info.value)  # the log's tail explains the failure
        assert prom.process is None and prom.dir is None
        assert [p.name for p in tmp_path.iterdir()] == ["broken.yml"]
    finally:
        prom.stop()


def test_a_port_taken_before_prometheus_binds_it_is_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_prometheus()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        monkeypatch.setattr(prometheus, "free_port", lambda: next(ports, None) or free_port())
        with Prometheus([ScrapeJob("self", ["127.0.0.1:1"], scheme="http")],
                        parent_dir=tmp_path) as prom:
            assert prom.port != taken.getsockname()[1]
            assert prom.query("vector(1)")[0]["value"][1] == "1"
            assert "address already in use" in prom.log_tail(100)
