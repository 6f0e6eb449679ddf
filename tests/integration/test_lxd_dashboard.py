"""LXD's Grafana dashboard (grafana.com 19131) works unchanged on corral.

Every PromQL expression of the dashboard (``tests/data/lxd_dashboard_queries.json``, taken
from canonical/lxd's ``grafana/LXD.json``; see its ``source`` and ``note``) is sent, as
Grafana would send it, to a real Prometheus that scrapes the shared daemon over HTTPS with a
metrics certificate while two containers run. The template variables get their values as
Grafana gives them: ``$job``, ``$project`` and ``$name`` from their own ``label_values()``
queries (asked of Prometheus too), ``$top`` its default, ``$__range``, ``$__interval`` and
``$__rate_interval`` from the time range. Instant targets are instant queries at the end of
the range, the others range queries with a ``$__interval`` step; the panels of the
``Instance: $name`` row are asked once per container. Each must parse and return data.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.grafana import (
    GrafanaTime,
    Target,
    Variable,
    interpolate,
    label_values_query,
    variable_names,
)
from devtools.harness import DaemonProcess
from devtools.prometheus import Prometheus, PrometheusError
from tests.integration.api import Api
from tests.integration.scraped import scraped

pytestmark = pytest.mark.real

QUERIES = json.loads((Path(__file__).parents[1] / "data" / "lxd_dashboard_queries.json")
                     .read_text())
JOB = "lxd"
SCRAPE_S = 1.0
HISTORY_S = 20.0  # seconds of samples before the dashboard is asked
V1_BLKIO = Path("/sys/fs/cgroup/blkio/blkio.throttle.io_service_bytes_recursive")
NEVER_THROTTLED = 1 << 40  # bytes/s
# (panel id, refId) of expressions that need something this daemon cannot have, and why.
# Each entry must still parse, and an entry that returns data fails the test: the list
# only ever holds what is truly missing.
NEEDS_ABSENT: dict[tuple[int, str], str] = {}


@dataclass(frozen=True)
class Asked:
    target: Target
    values: dict[str, str]
    expr: str
    result: list[dict[str, Any]] | None  # None: Prometheus refused the query
    error: str = ""


def targets() -> list[Target]:
    return [Target(**t) for t in QUERIES["targets"]]


def dashboard_variables() -> list[Variable]:
    return [Variable(**v) for v in QUERIES["variables"]]


def whole_disk(path: Path) -> str | None:
    """``major:minor`` of the disk that holds ``path`` (a partition's disk), or None when
    it is no block device (tmpfs, btrfs subvolumes, overlay)."""
    dev = path.stat().st_dev
    sysfs = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not sysfs.exists():
        return None
    if (sysfs / "partition").exists():
        sysfs = sysfs.resolve().parent
    return (sysfs / "dev").read_text().strip()


def count_block_io(pid: int, disk: str | None) -> None:
    """Make cgroup v1 count the block I/O of the container whose init is ``pid``.

    On cgroup v1 the kernel (6.18 here) counts ``blkio.throttle.io_service*`` only on a
    disk where block throttling has been set up, which its first throttle rule does: until
    then every cgroup reads ``Total 0`` and LXD's disk metrics are absent (on LXD as well).
    corral has no disk limits to set one, so the test writes a rule far above any real
    rate into the container's own blkio cgroup (it goes with the container). cgroup v2's
    ``io.stat`` counts without one."""
    if disk is None or not V1_BLKIO.exists():
        return
    line = next(entry for entry in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                if "blkio" in entry.split(":")[1].split(","))
    cgroup = V1_BLKIO.parent / line.split(":", 2)[2].lstrip("/")
    for way in ("read", "write"):
        (cgroup / f"blkio.throttle.{way}_bps_device").write_text(f"{disk} {NEVER_THROTTLED}")


def _workload(daemon: DaemonProcess, name: str) -> None:
    """Some CPU, and disk I/O that reaches the block device (direct I/O: a cached write
    is charged to the kernel's flusher, not the container)."""
    daemon.corral("exec", name, "--", "sh", "-c",
                  "dd if=/dev/zero of=/root/io bs=64k count=32 oflag=direct && "
                  "dd if=/root/io of=/dev/null bs=64k iflag=direct && rm /root/io; "
                  "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")


@pytest.fixture(scope="module")
def containers(daemon: DaemonProcess) -> Iterator[list[str]]:
    api = Api(str(daemon.socket))
    names = [f"dash{secrets.token_hex(3)}" for _ in range(2)]
    try:
        for name in names:
            api.ok("POST", "/1.0/instances", {"name": name, "start": True,
                                              "source": {"type": "image", "alias": "busybox"}})
            count_block_io(api.get(f"/1.0/instances/{name}/state")["pid"],
                           whole_disk(daemon.root))
            _workload(daemon, name)
        yield names
    finally:
        for name in names:
            api.settle("PUT", f"/1.0/instances/{name}/state", {"action": "stop",
                                                               "force": True})
            api.settle("DELETE", f"/1.0/instances/{name}")


@pytest.fixture(scope="module")
def prom(daemon: DaemonProcess, containers: list[str],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with scraped(daemon, tmp_path_factory.mktemp("lxd-dashboard"), [(JOB, False)],
                 SCRAPE_S) as prometheus:
        for name in containers:
            prometheus.wait_for(f'lxd_procs_total{{job="{JOB}",name="{name}"}}', 60)
        yield prometheus


def variable_values(prom: Prometheus, found: dict[str, str], var: Variable) -> list[str]:
    """What Grafana lists for ``var`` (``label_values`` is Prometheus's label values API,
    restricted by the selector when there is one)."""
    if var.type == "custom":
        return [v.strip() for v in var.query.split(",")]
    selector, label = label_values_query(var.query)
    params = {"match[]": interpolate(selector, found)} if selector else None
    return [str(v) for v in prom.api(f"label/{label}/values", params)]


def ask(prom: Prometheus, target: Target, values: dict[str, str], clock: GrafanaTime,
        end: float) -> Asked:
    expr = interpolate(target.expr, values)
    try:
        if target.instant:
            data = prom.api("query", {"query": expr, "time": f"{end:.3f}"})
        else:
            data = prom.api("query_range", {"query": expr, "start": f"{end - clock.range_s:.3f}",
                                            "end": f"{end:.3f}", "step": f"{clock.interval_s}"})
    except PrometheusError as exc:
        return Asked(target, values, expr, None, str(exc))
    result = data["result"]
    if data["resultType"] in ("scalar", "string"):
        result = [{"value": result}]
    return Asked(target, values, expr, list(result))


def test_every_query_of_lxds_dashboard_returns_data(prom: Prometheus,
                                                    containers: list[str]) -> None:
    time.sleep(HISTORY_S)  # the dashboard's time range: the last HISTORY_S seconds
    end = time.time()
    clock = GrafanaTime(range_s=HISTORY_S, scrape_s=SCRAPE_S)

    # The variables, in order, as Grafana resolves them: the first value of each (a row
    # that repeats over one is asked for each of its values, below).
    values = {**clock.variables()}
    choices: dict[str, list[str]] = {}
    for var in dashboard_variables():
        choices[var.name] = variable_values(prom, values, var)
        assert choices[var.name], f"${var.name}: {var.query!r} lists nothing"
        values[var.name] = var.default or choices[var.name][0]
    assert choices["job"] == [JOB] and choices["project"] == ["default"]
    assert set(containers) <= set(choices["name"]), choices["name"]

    asked = []
    for target in targets():
        assert variable_names(target.expr) <= set(values), target
        repeats = ([{target.repeat: v} for v in containers] if target.repeat else [{}])
        for extra in repeats:
            asked.append(ask(prom, target, {**values, **extra}, clock, end))

    refused = [(a.target.panel_id, a.target.ref_id, a.expr, a.error) for a in asked
               if a.result is None]
    assert not refused, refused
    empty = {(a.target.panel_id, a.target.ref_id): a.expr for a in asked if not a.result}
    unexplained = {key: expr for key, expr in empty.items() if key not in NEEDS_ABSENT}
    assert not unexplained, f"no data: {unexplained}"
    stale = sorted(set(NEEDS_ABSENT) - set(empty))
    assert not stale, f"NEEDS_ABSENT entries that do return data: {stale}"
