"""A real Prometheus server for tests, scraping given targets over HTTPS.

Tests that must prove corral's ``/1.0/metrics`` works with Prometheus itself (client
certificate, pinned server certificate, ``?scope=cluster``) start Debian's ``prometheus`` as a
child process rather than parse the text themselves::

    job = ScrapeJob("corral", ["127.0.0.1:8443"], params={"scope": ["cluster"]},
                    tls=TlsFiles(cert, key, ca_file=server_crt, server_name="localhost"))
    with Prometheus([job]) as prom:          # started and ready, or PrometheusError
        prom.wait_for('up{job="corral"} == 1')
        prom.query("lxd_uptime_seconds")     # [{"metric": {...}, "value": [ts, "12"]}]

It listens on 127.0.0.1 on a free port, scrapes every second, keeps its configuration, log
and TSDB in a directory of its own, and ``stop()`` (the context's exit, also after a failed
start) kills it by PID and removes that directory. Started from the main thread it also dies
with the test process (``PR_SET_PDEATHSIG``), so a killed pytest leaves no server behind.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

START_ATTEMPTS = 3  # a free port can be taken between probing it and Prometheus binding it


class PrometheusError(RuntimeError):
    """Prometheus did not start, did not become ready, or its API answered an error."""


@dataclass(frozen=True)
class TlsFiles:
    """A scrape's ``tls_config``: client certificate and the server certificate to pin."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class ScrapeJob:
    """One ``scrape_configs`` entry; ``targets`` are ``host:port``."""

    name: str
    targets: Sequence[str]
    metrics_path: str = "/1.0/metrics"
    params: Mapping[str, Sequence[str]] = field(default_factory=dict)
    scheme: str = "https"
    tls: TlsFiles | None = None
    honor_labels: bool = False


def duration(seconds: float) -> str:
    """Prometheus' duration syntax for ``seconds`` (whole milliseconds, at least 1 ms)."""
    return f"{max(1, round(seconds * 1000))}ms"


def _tls_config(tls: TlsFiles) -> dict[str, Any]:
    config: dict[str, Any] = {key: str(value) for key, value in
                              (("cert_file", tls.cert_file), ("key_file", tls.key_file),
                               ("ca_file", tls.ca_file)) if value is not None}
    if tls.server_name:
        config["server_name"] = tls.server_name
    if tls.insecure_skip_verify:
        config["insecure_skip_verify"] = True
    return config


def scrape_config(job: ScrapeJob) -> dict[str, Any]:
    """The ``scrape_configs`` entry of ``job``."""
    config: dict[str, Any] = {"job_name": job.name, "scheme": job.scheme,
                              "metrics_path": job.metrics_path,
                              "static_configs": [{"targets": list(job.targets)}]}
    if job.params:
        config["params"] = {key: list(values) for key, values in job.params.items()}
    if job.honor_labels:
        config["honor_labels"] = True
    if job.tls is not None:
        config["tls_config"] = _tls_config(job.tls)
    return config


def render_config(jobs: Sequence[ScrapeJob], interval: float = 1.0,
                  rule_files: Sequence[Path] = ()) -> dict[str, Any]:
    """A whole ``prometheus.yml`` as data: every job scraped and every rule evaluated each
    ``interval`` seconds, a scrape timing out after one interval (Prometheus refuses a
    timeout longer than the interval). Raises ``ValueError`` for duplicate job names."""
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate job names: {names}")
    every = duration(interval)
    config: dict[str, Any] = {
        "global": {"scrape_interval": every, "scrape_timeout": every,
                   "evaluation_interval": every},
        "scrape_configs": [scrape_config(job) for job in jobs]}
    if rule_files:
        config["rule_files"] = [str(path) for path in rule_files]
    return config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Loopback only: never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Prometheus:
    """A Prometheus child process with its own directory; see the module docstring."""

    def __init__(self, jobs: Sequence[ScrapeJob], *, interval: float = 1.0,
                 rule_files: Sequence[Path] = (), binary: str = "prometheus",
                 parent_dir: Path | None = None) -> None:
        self.config = render_config(jobs, interval, rule_files)
        self.binary = binary
        self.parent_dir = parent_dir
        self.dir: Path | None = None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Prometheus:
        """Start and wait for ``/-/ready``. Raises ``PrometheusError`` (with the log's tail)
        after stopping whatever it started."""
        path = shutil.which(self.binary)
        if path is None:
            raise PrometheusError(f"{self.binary} not found (apt-get install prometheus)")
        self.dir = Path(tempfile.mkdtemp(prefix="corral-prometheus-", dir=self.parent_dir))
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        try:
            for _ in range(START_ATTEMPTS):
                self._spawn(path)
                if self._wait_ready(timeout):
                    return self
                if "address already in use" not in self.log_tail():
                    break
                self._kill()
            raise PrometheusError(f"prometheus not ready within {timeout}s:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def _spawn(self, path: str) -> None:
        assert self.dir is not None
        self.port = free_port()
        argv = [path, f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=info"]
        # The death signal follows the thread that forks: from any other thread it would
        # kill Prometheus as soon as that thread ends.
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            argv = [setpriv, "--pdeathsig", "KILL", *argv]
        with (self.dir / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=log, cwd=self.dir)

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with _OPENER.open(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        return False

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def stop(self) -> None:
        """Kill the server (SIGTERM, then SIGKILL after 10 s) and remove its directory.
        Safe to call twice or after a failed start."""
        self._kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        if self.dir is None:
            return ""
        try:
            text = (self.dir / "prometheus.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # --- HTTP API -----------------------------------------------------------------------

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """``data`` of ``GET /api/v1/<path>``; raises ``PrometheusError`` on an error answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with _OPENER.open(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422 carry the error in the same envelope
            body = json.load(exc)
        except (urllib.error.URLError, OSError) as exc:
            raise PrometheusError(f"GET /api/v1/{path}: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"GET /api/v1/{path}: {body.get('errorType')}: "
                                  f"{body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query now: ``[{"metric": {labels}, "value": [time, "text"]}, ...]``
        (a scalar or string result comes back as one entry without labels)."""
        data = self.api("query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def targets(self) -> list[dict[str, Any]]:
        """The active targets: ``labels``, ``scrapeUrl``, ``health`` (up/down/unknown),
        ``lastError``, ..."""
        return list(self.api("targets", {"state": "active"})["activeTargets"])

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts of the loaded rule files."""
        return list(self.api("alerts")["alerts"])

    def wait_for(self, expr: str, timeout: float = 30.0,
                 predicate: Callable[[list[dict[str, Any]]], bool] = bool
                 ) -> list[dict[str, Any]]:
        """Query ``expr`` until ``predicate`` holds for its result (by default: not empty)
        and return that result; raises ``PrometheusError`` with the targets' state after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                states = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in self.targets()]
                raise PrometheusError(f"{expr!r} not satisfied after {timeout}s: {result}; "
                                      f"targets: {states}")
            time.sleep(0.25)


def sample_value(sample: Mapping[str, Any]) -> float:
    """The number of one ``query`` result entry."""
    return float(sample["value"][1])
