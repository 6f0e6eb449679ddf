"""deploy/grafana/corral.json against the real daemon and a real Prometheus.

Every metric name the dashboard uses must be served by the shared daemon (``/1.0/metrics``
and ``?scope=cluster``), except the few that only appear after an event this single-member
daemon cannot have (``AFTER_EVENTS``, each with its reason): those must at least be made by
the code (``devtools.exported_metrics``, as tests/unit/test_grafana_dashboard.py checks for
every name). Then a Prometheus scrapes the daemon both ways the deploy/prometheus
configuration offers (``corral`` per member, ``corral-cluster`` through ``scope=cluster``),
and every panel query, with ``$job`` set to each value Grafana lists, must parse and return
data unless it needs one of those names.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.api.metrics.render import parse
from devtools.exported_metrics import exported_names
from devtools.grafana import (
    GrafanaTime,
    interpolate,
    label_values_query,
    metric_names,
    prometheus_targets,
    variables,
)
from devtools.harness import DaemonProcess
from devtools.prometheus import Prometheus
from tests.integration.api import Api
from tests.integration.scraped import scraped

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[2]
BOARD = json.loads((ROOT / "deploy" / "grafana" / "corral.json").read_text())
SOURCES = [ROOT / "cluster", ROOT / "node_agent", ROOT / "corral_shared"]
JOBS = {"corral": False, "corral-cluster": True}  # job -> scraped with scope=cluster
SCRAPE_S = 1.0
HISTORY_S = 8.0
# Names the dashboard uses that appear only after something this daemon cannot do.
AFTER_EVENTS = {
    "corral_ha_replica_lag_seconds": "an HA instance with a complete replica on another "
                                     "member: needs a cluster of two or more",
    "corral_scheduler_placements_total": "a placement: an instance created since the "
                                         "daemon started (other tests' work)",
    "corral_scheduler_rejections_total": "a member the scheduler filtered out: needs a "
                                         "cluster of two or more",
    "corral_moves_total": "a move: needs a cluster of two or more",
    "corral_move_duration_seconds_bucket": "a move: needs a cluster of two or more",
    "corral_move_downtime_seconds_bucket": "a move: needs a cluster of two or more",
}
CLUSTER_SCOPE_ONLY = {"corral_member_scrape_success"}  # served with ?scope=cluster only


def served_names(api: Api, query: str = "") -> set[str]:
    status, _, body = api.raw("GET", f"/1.0/metrics{query}")
    assert status == 200
    return {s.name for family in parse(body.decode()) for s in family.samples}


def used_names() -> set[str]:
    return set().union(*(metric_names(t.expr) for t in prometheus_targets(BOARD)))


def test_every_name_the_dashboard_uses_is_served_or_waits_for_an_event(
        daemon: DaemonProcess) -> None:
    api = Api(str(daemon.socket))
    api.get("/1.0/instances")  # a request, so the API latency histogram has a series
    served = served_names(api) | served_names(api, "?scope=cluster")
    missing = used_names() - served
    assert missing <= set(AFTER_EVENTS), sorted(missing - set(AFTER_EVENTS))
    in_code = exported_names(SOURCES)
    for name in missing:  # the fallback: at least the code makes it
        assert name in in_code, name
    assert CLUSTER_SCOPE_ONLY <= served_names(api, "?scope=cluster")


@pytest.fixture(scope="module")
def prom(daemon: DaemonProcess, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Prometheus]:
    with scraped(daemon, tmp_path_factory.mktemp("corral-dashboard"), list(JOBS.items()),
                 SCRAPE_S) as prometheus:
        yield prometheus


def test_every_panel_query_parses_and_has_data_on_both_jobs(prom: Prometheus) -> None:
    time.sleep(HISTORY_S)
    end = time.time()
    clock = GrafanaTime(range_s=HISTORY_S, scrape_s=SCRAPE_S)
    [job_var] = [v for v in variables(BOARD) if v.name == "job"]
    selector, label = label_values_query(job_var.query)
    jobs = prom.api(f"label/{label}/values", {"match[]": selector or ""})
    assert sorted(jobs) == sorted(JOBS)

    empty = []
    for job, cluster in JOBS.items():
        values = {**clock.variables(), "job": job}
        absent = set(AFTER_EVENTS) | (set() if cluster else CLUSTER_SCOPE_ONLY)
        for target in prometheus_targets(BOARD):
            expr = interpolate(target.expr, values)
            if target.instant:  # PrometheusError (the test fails) if it does not parse
                result = prom.api("query", {"query": expr, "time": f"{end:.3f}"})["result"]
            else:
                result = prom.api("query_range", {
                    "query": expr, "start": f"{end - clock.range_s:.3f}",
                    "end": f"{end:.3f}", "step": str(clock.interval_s)})["result"]
            if not result and not metric_names(target.expr) & absent:
                empty.append((job, target.panel_id, target.title, expr))
    assert not empty, empty
