"""``/1.0/metrics`` on a real daemon with a real container: LXD's names and labels,
promtool's verdict, who may read (metrics certificates, ``core.metrics_address``,
``core.metrics_authentication``), concurrent scrapes, and bad input."""

from __future__ import annotations

import http.client
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cluster.api.metrics.render import parse
from corral_shared import tls
from devtools.harness import DaemonProcess
from tests.integration.api import Api
from tests.integration.test_https_trust import client_pair, free_port

pytestmark = pytest.mark.real


def scrape(api: Api, query: str = "", accept: str = "") -> tuple[int, str, str]:
    status, headers, body = api.raw("GET", f"/1.0/metrics{query}",
                                    headers={"Accept": accept} if accept else None)
    return status, headers.get("Content-Type", ""), body.decode()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in parse(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def tls_get(port: int, path: str, cert: tuple[Path, Path] | None) -> int:
    context = tls.client_context(*(cert or (None, None)))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@pytest.fixture(scope="module")
def running(daemon: DaemonProcess) -> Iterator[str]:
    api = Api(str(daemon.socket))
    name = f"m{secrets.token_hex(3)}"
    api.ok("POST", "/1.0/instances", {"name": name, "source": {"type": "image",
                                                               "alias": "busybox"},
                                      "start": True})
    yield name
    api.settle("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})
    api.settle("DELETE", f"/1.0/instances/{name}")


def test_a_running_container_has_lxds_series(api: Api, running: str) -> None:
    stopped = f"s{secrets.token_hex(3)}"
    api.ok("POST", "/1.0/instances", {"name": stopped, "source": {"type": "image",
                                                                  "alias": "busybox"}})
    try:
        deadline = time.monotonic() + 30
        while True:  # the cache may hold a collection from before the container started
            status, ctype, text = scrape(api)
            assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
            found = samples(text)
            mine = [v for labels, v in found.get("lxd_procs_total", [])
                    if labels.get("name") == running]
            if mine or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert mine and mine[0] >= 1
        for name in ("lxd_cpu_seconds_total", "lxd_memory_MemTotal_bytes",
                     "lxd_filesystem_size_bytes"):
            labels = [lb for lb, _ in found[name] if lb.get("name") == running]
            assert labels, name
            assert labels[0]["project"] == "default" and labels[0]["type"] == "container"
        assert not any(lb.get("name") == stopped for series in found.values()
                       for lb, _ in series), "a stopped instance has series"
        counts = {lb["type"]: v for lb, v in found["lxd_instances"]}
        assert counts["container"] >= 2
        for name in ("lxd_uptime_seconds", "lxd_operations_total", "lxd_warnings_total",
                     "corral_raft_leader", "corral_members"):
            assert name in found, name
        assert [v for _, v in found["corral_raft_leader"]] == [1.0]
    finally:
        api.settle("DELETE", f"/1.0/instances/{stopped}")


def test_the_control_plane_is_counted_where_it_works(api: Api, running: str) -> None:
    """A lone member leads: its scheduler runs, liveness and HA figures are here."""
    found = samples(scrape(api)[2])

    def only(name: str, **labels: str) -> float:
        (value,) = [v for lb, v in found[name] if lb == labels]
        return value

    assert only("corral_scheduler_placements_total", purpose="create", result="placed") >= 1
    assert only("corral_scheduler_placement_duration_seconds_count") >= 1
    assert only("corral_scheduler_rejections_total", reason="memory") >= 0
    assert only("corral_moves_total", kind="move", result="succeeded") >= 0
    assert only("corral_ha_failovers_total") == 0.0
    assert only("corral_ha_waiting") == 0.0
    assert only("corral_ha_fenced_instances_total") == 0.0
    ages = found["corral_member_heartbeat_age_seconds"]  # the leader judges liveness
    assert len(ages) == 1 and 0.0 <= ages[0][1] < 10.0


def test_openmetrics_when_asked(api: Api, running: str) -> None:
    status, ctype, text = scrape(api, accept="application/openmetrics-text;version=1.0.0")
    assert status == 200 and ctype.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1


def test_api_requests_are_counted_by_entity_and_result(api: Api) -> None:
    def count(entity: str, result: str) -> float:
        found = samples(scrape(api)[2]).get("lxd_api_requests_completed_total", [])
        return sum(v for lb, v in found if lb == {"entity_type": entity, "result": result})

    before_ok, before_404 = count("instance", "succeeded"), count("server", "error_client")
    api.get("/1.0/instances")
    assert api.raw("GET", "/not/an/endpoint")[0] == 404
    assert count("instance", "succeeded") == before_ok + 1
    assert count("server", "error_client") == before_404 + 1


def test_promtool_accepts_the_exposition(api: Api, running: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CORRAL_REQUIRE_REAL") == "1":
            pytest.fail("promtool is missing (Debian's prometheus package)")
        pytest.skip("needs promtool")
    text = scrape(api)[2]
    result = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                            capture_output=True, timeout=60, check=False)
    # LXD's own names break two lints, and compatibility requires them: camelCase
    # (lxd_memory_MemTotal_bytes), and "_total" on its two gauges (LXD types
    # lxd_procs_total and lxd_cpu_effective_total as gauges). Anything else is a defect.
    lxd_gauges = ("lxd_procs_total non-counter", "lxd_cpu_effective_total non-counter")
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "camelCase" not in line
                and not line.startswith(lxd_gauges)]
    assert not problems, problems


def test_bad_input_is_a_400(api: Api) -> None:
    for query in ("?scope=galaxy", "?scope=", "?colour=red", "?project=nope"):
        status, _, text = scrape(api, query)
        if query == "?scope=":
            assert status == 200
            continue
        assert status == 400, (query, text)
        assert '"error_code":400' in text.replace(" ", "")


def test_concurrent_scrapes_never_block_each_other(api: Api, running: str) -> None:
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: scrape(api)[0], range(64)))
    assert results == [200] * 64


def test_corral_metrics_prints_the_exposition(daemon: DaemonProcess) -> None:
    out = daemon.corral("metrics").stdout.decode()
    assert "# TYPE lxd_instances gauge" in out
    cluster = daemon.corral("metrics", "--scope", "cluster").stdout.decode()
    assert 'corral_member_scrape_success{member="' in cluster


@pytest.fixture
def metrics_cert(daemon: DaemonProcess, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    crt, key = client_pair(tmp_path)
    daemon.corral("config", "trust", "add", str(crt), "--type", "metrics", "--name",
                  "scraper")
    yield crt, key
    fingerprint = tls.fingerprint(tls.pem_to_der(crt.read_text()))
    daemon.corral("config", "trust", "remove", fingerprint, check=False)


def test_metrics_certificates_read_metrics_only(api: Api, daemon: DaemonProcess,
                                                metrics_cert: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    before = api.get("/1.0")["config"]
    port, metrics_port = free_port(), free_port()
    api.ok("PATCH", "/1.0", {"config": {"core.https_address": f"127.0.0.1:{port}",
                                        "core.metrics_address": f"127.0.0.1:{metrics_port}"}})
    try:
        other = tmp_path / "other"
        other.mkdir()
        stranger = client_pair(other)
        for where in (port, metrics_port):
            assert tls_get(where, "/1.0/metrics", None) == 403
            assert tls_get(where, "/1.0/metrics", stranger) == 403
            assert tls_get(where, "/1.0/metrics", metrics_cert) == 200
            assert tls_get(where, "/1.0/instances", metrics_cert) == 403
            assert tls_get(where, "/1.0/certificates", metrics_cert) == 403
        assert tls_get(port, "/1.0", metrics_cert) == 200  # the untrusted view, as LXD
        api.ok("PATCH", "/1.0", {"config": {"core.metrics_authentication": "false"}})
        assert tls_get(metrics_port, "/1.0/metrics", None) == 200
        assert tls_get(port, "/1.0/metrics", None) == 200
        assert tls_get(port, "/1.0/instances", None) == 403
        assert tls_get(metrics_port, "/1.0/instances", None) == 403
        status, doc = api.call("PATCH", "/1.0", {"config": {
            "core.metrics_authentication": "maybe"}})
        assert status == 400 and "core.metrics_authentication" in doc["error"]
        status, doc = api.call("PATCH", "/1.0", {"config": {
            "core.metrics_address": f"127.0.0.1:{port}"}})
        assert status == 400
    finally:
        api.ok("PUT", "/1.0", {"config": before})
    assert api.get("/1.0")["config"].get("core.metrics_address") is None
