"""LXD's instance metrics of the instances this member runs.

The figures come from the drivers (``NodeFacade.metric_samples``: cgroup and ``/proc``
files for containers; the guest agent, QMP and the host's tap devices for VMs) as plain
samples; this module groups them into families and adds the ``name``, ``project`` and
``type`` labels LXD puts on every instance series. Stopped instances have no series (as
LXD since canonical/lxd#13222); ``lxd_instances`` counts them all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from cluster.api.context import Context
from corral_shared.instance_metrics import COUNTER, FAMILIES, Sample

log = logging.getLogger(__name__)
PROJECT = "default"  # corral has one project
LXD_TYPES = {"container": "container", "virtual-machine": "virtual-machine"}


@dataclass(frozen=True)
class Measured:
    """One running instance's samples."""

    name: str
    type: str
    samples: Sequence[Sample]


def families(measured: Iterable[Measured]) -> list[Metric]:
    """One family per LXD metric present, in ``FAMILIES`` order; each series labelled with
    its own labels (sorted) and then ``name``, ``project``, ``type``."""
    grouped: dict[str, list[tuple[dict[str, str], float]]] = {}
    for item in measured:
        for sample in item.samples:
            labels = {**dict(sorted(sample.labels.items())), "name": item.name,
                      "project": PROJECT, "type": item.type}
            grouped.setdefault(sample.family, []).append((labels, sample.value))
    out: list[Metric] = []
    for name, family in FAMILIES.items():
        series = grouped.get(name)
        if not series:
            continue
        made: Metric = (CounterMetricFamily(name, family.help)
                        if family.type == COUNTER else GaugeMetricFamily(name, family.help))
        for labels, value in series:
            made.add_sample(made.name + ("_total" if family.type == COUNTER else ""),
                            labels, value)
        out.append(made)
    return out


def instance_counts(ctx: Context) -> dict[str, int]:
    """This member's instances by LXD type (running or not)."""
    counts = dict.fromkeys(LXD_TYPES.values(), 0)
    with ctx.store.read() as state:
        for inst in state.instances.values():
            if inst.location == ctx.member:
                kind = LXD_TYPES.get(inst.type, inst.type)
                counts[kind] = counts.get(kind, 0) + 1
    return counts


async def measure(ctx: Context) -> list[Measured]:
    """Samples of every instance placed on this member, read off the event loop (one
    worker thread per instance, so a slow guest agent holds up only its VM)."""
    with ctx.store.read() as state:
        mine = [(i.name, i.type) for i in state.instances.values()
                if i.location == ctx.member]

    async def one(name: str, kind: str) -> Measured | None:
        try:
            samples = await asyncio.to_thread(ctx.host.metric_samples, name, kind)
        except Exception as exc:  # noqa: BLE001 - one instance's failure spares the rest
            log.info("no metrics for %s: %s", name, exc)
            return None
        return Measured(name, LXD_TYPES.get(kind, kind), samples) if samples else None

    found = await asyncio.gather(*(one(n, k) for n, k in mine))
    return [m for m in found if m is not None]


