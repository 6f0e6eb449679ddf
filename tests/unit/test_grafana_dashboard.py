"""deploy/grafana/corral.json is a sound dashboard that only asks for names corral serves.

The names come from ``devtools.exported_metrics``, which reads every metric family the code
makes, so names that only show after an event (a failover, an HA replica) count too; that
reader is itself checked against families rendered by the real code. The queries of LXD's
dashboard (tests/data/lxd_dashboard_queries.json) must name only exported families as well.
tests/integration/test_corral_dashboard.py runs the same queries against a real Prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cluster.api.metrics.api_stats import ApiStats
from cluster.api.metrics.cache import ScrapeCache, cache_families
from cluster.api.metrics.render import parse, render
from cluster.state.raft_metrics import RaftMetrics, RaftView
from devtools.exported_metrics import exported_names, names_in_source, wire_names
from devtools.grafana import (
    Target,
    label_values_query,
    metric_names,
    prometheus_targets,
    variable_names,
    variables,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "corral.json"
LXD_QUERIES = ROOT / "tests" / "data" / "lxd_dashboard_queries.json"
SOURCES = [ROOT / "cluster", ROOT / "node_agent", ROOT / "corral_shared"]
BUILTINS = {"__interval", "__interval_ms", "__rate_interval", "__range", "__range_s",
            "__range_ms"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_every_panel_asks_the_prometheus_chosen_in_the_datasource_variable() -> None:
    board = dashboard()
    [source] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert source["name"] == "datasource" and source["query"] == "prometheus"
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, var["name"]
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_ids_refs_and_layout_are_consistent() -> None:
    board = dashboard()
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]


def test_queries_use_only_defined_variables() -> None:
    board = dashboard()
    defined = {v.name for v in variables(board)} | BUILTINS
    for target in prometheus_targets(board):
        assert variable_names(target.expr) <= defined, target
    for var in variables(board):
        selector, label = label_values_query(var.query)
        assert label == "job" and selector is not None
        assert metric_names(selector) <= set(exported_names(SOURCES))


def test_every_metric_the_dashboard_uses_is_exported() -> None:
    exported = exported_names(SOURCES)
    targets = prometheus_targets(dashboard())
    assert len(targets) >= 20
    used: set[str] = set()
    for target in targets:
        names = metric_names(target.expr)
        assert names, target
        used |= names
    assert not used - set(exported), sorted(used - set(exported))
    # What the dashboard was asked to show.
    for name in ("corral_members", "corral_raft_leader", "corral_raft_term",
                 "corral_raft_commit_index", "corral_raft_leader_changes_seen_total",
                 "corral_raft_commit_latency_seconds_bucket",
                 "corral_raft_wal_fsync_duration_seconds_bucket",
                 "corral_raft_proposals_failed_total", "corral_raft_proposals_pending",
                 "corral_api_request_duration_seconds_bucket",
                 "corral_ha_replica_lag_seconds", "corral_member_scrape_success"):
        assert name in used, name


def test_every_metric_lxds_dashboard_uses_is_exported() -> None:
    queries = json.loads(LXD_QUERIES.read_text())
    assert queries["source"].startswith("canonical/lxd:grafana/LXD.json@")
    exported = set(exported_names(SOURCES))
    used = set()
    for target in queries["targets"]:
        used |= metric_names(Target(**target).expr)
    for var in queries["variables"]:
        if var["type"] == "query":
            used |= metric_names(label_values_query(var["query"])[0] or "")
    assert len(used) >= 20
    assert not used - exported, sorted(used - exported)


def rendered_names(families: list[Any]) -> set[str]:
    """Sample names of ``families`` as served, but ``_created`` (prometheus_client's
    creation time of a counter or histogram object, which the reader does not list: no
    dashboard has a use for it, and the Raft store strips it)."""
    return {s.name for family in parse(render(families).decode()) for s in family.samples
            if not s.name.endswith("_created")}


async def _nothing() -> list[Any]:
    return []


def test_the_source_reader_finds_every_family_the_code_renders() -> None:
    raft = RaftMetrics()
    raft.answered(raft.proposed(), True)
    raft.answered(raft.proposed(), False)
    raft.wal_fsync.observe(0.001)
    raft.snapshot_duration.observe(0.1)
    raft.leader_changes.inc()
    view = RaftView(role="leader", has_leader=True, term=3, commit_index=10,
                    applied_index=10, voters=3, applied_commands=12)
    stats = ApiStats()
    stats.latency.labels("/1.0", "GET", "200").observe(0.01)
    stats.completed[("server", "succeeded")] += 1
    stats.ongoing["server"] += 1
    families = [*raft.collect(view), *stats.families(), *cache_families(ScrapeCache(_nothing))]
    rendered = rendered_names(families)
    assert len(rendered) >= 25
    exported = exported_names(SOURCES)
    assert rendered <= set(exported), sorted(rendered - set(exported))


def test_the_source_reader_follows_prefixes_helpers_and_suffixes() -> None:
    source = '''
PREFIX = "corral_x_"
def _gauge(name, doc, value):
    return GaugeMetricFamily(PREFIX + name, doc, value=value)
a = _gauge("up", "", 1)
b = Counter(PREFIX + "events", "", registry=None)
c = prometheus_client.Histogram("corral_wait_seconds", "")
d = CounterMetricFamily("lxd_ops_total", "")
e = GaugeMetricFamily("node_load1", "")  # not corral's
f = Gauge(f"corral_{name}", "")  # not readable: left out
'''
    assert sorted(names_in_source(source)) == [
        ("corral_wait_seconds", "Histogram"), ("corral_x_events", "Counter"),
        ("corral_x_up", "GaugeMetricFamily"), ("lxd_ops_total", "CounterMetricFamily")]
    assert wire_names("corral_x_events", "Counter") == ["corral_x_events_total"]
    assert wire_names("lxd_ops_total", "CounterMetricFamily") == ["lxd_ops_total"]
    assert wire_names("corral_wait_seconds", "Histogram") == [
        "corral_wait_seconds_bucket", "corral_wait_seconds_sum", "corral_wait_seconds_count"]
