"""Corral's control-plane families: the daemon's ``ControlMetrics`` (placements, moves,
failovers, liveness verdicts: ``cluster/controllers/control_metrics.py``) and the HA
instances this member's fencing killed (``node_agent/fencing/kills.py``, through the
facade). Read from memory on every scrape."""

from __future__ import annotations

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from cluster.api.context import Context


def families(ctx: Context) -> list[Metric]:
    fenced = CounterMetricFamily(
        "corral_ha_fenced_instances", "HA instances this member's fencing killed (its "
        "lease ran out: cut off from the cluster) since this daemon started, by the "
        "daemon or its watchdog, each process once.", value=ctx.host.fenced_instances())
    return [*ctx.control.families(), fenced]
