"""LXD's server metrics and corral's view of the cluster from this member.

``lxd_instances{project,type}``, ``lxd_operations_total``, ``lxd_uptime_seconds`` and
``lxd_warnings_total`` as LXD names them (corral raises no warnings: the count is
honestly 0). ``corral_members{status}`` counts members by the status this member's
replica holds; ``corral_operations{class,status}`` this member's operations.
``corral_ha_replica_lag_seconds{name,project,holder}`` is reported by the member that
runs the instance: the age of each holder's newest complete replica on the source's own
clock (the clock that stamped it), so no two clocks are compared; a holder with no
complete replica yet has no series.
"""

from __future__ import annotations

import time
from collections import Counter

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from cluster.api.context import Context
from cluster.api.metrics.instances import PROJECT, instance_counts
from cluster.state.apply_members import member_status
from cluster.state.ha import ha_enabled

STATUSES = ("ONLINE", "OFFLINE", "EVACUATED")


def families(ctx: Context, now: float | None = None) -> list[Metric]:
    now = time.time() if now is None else now
    instances = GaugeMetricFamily("lxd_instances", "The number of instances.",
                                  labels=["project", "type"])
    for kind, count in sorted(instance_counts(ctx).items()):
        instances.add_metric([PROJECT, kind], count)
    ops = ctx.ops.all()
    running = sum(1 for op in ops if op.status == "Running")
    by_class: Counter[tuple[str, str]] = Counter((op.class_, op.status) for op in ops)
    operations = GaugeMetricFamily("corral_operations",
                                   "This member's operations, by class and status.",
                                   labels=["class", "status"])
    for (class_, status), count in sorted(by_class.items()):
        operations.add_metric([class_, status], count)
    members = GaugeMetricFamily("corral_members",
                                "Cluster members by status, as this member's replica has "
                                "them.", labels=["status"])
    lag = GaugeMetricFamily("corral_ha_replica_lag_seconds",
                            "Age of each holder's newest complete replica of an HA "
                            "instance this member runs.", labels=["name", "project", "holder"])
    with ctx.store.read() as state:
        statuses = Counter(member_status(m) for m in state.members.values())
        for inst in state.instances.values():
            if inst.location != ctx.member or not inst.replicas or not ha_enabled(
                    state, inst):
                continue
            for holder, replica in sorted(inst.replicas.items()):
                if replica.snapshot and replica.epoch == inst.epoch:
                    lag.add_metric([inst.name, PROJECT, holder],
                                   max(0.0, now - replica.synced_at))
    for status in STATUSES:
        members.add_metric([status], statuses.get(status, 0))
    return [
        instances,
        # Counters in LXD's exposition (its type follows the ``_total`` suffix), though
        # they can fall; the uptime is a gauge here (LXD calls it a counter, but a
        # counter's samples end in ``_total`` in the Prometheus format).
        CounterMetricFamily("lxd_operations", "The number of running operations.",
                            value=running),
        GaugeMetricFamily("lxd_uptime_seconds", "The daemon uptime in seconds.",
                          value=max(0.0, now - ctx.started_at)),
        CounterMetricFamily("lxd_warnings", "The number of active warnings.", value=0),
        operations, members, lag,
    ]
