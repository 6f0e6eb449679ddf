"""What the shipper sends, and when (pure).

A member ships each HA instance it runs (``cluster.ha=restart``, created here) to each of
the instance's replica holders (``Instance.replicas``, chosen on the leader) once per
``cluster.ha.replication_interval``, counted from when the last shipment to that holder
*began*: a slow shipment does not stretch the gap to the next, and a failed one is tried
again one interval later, not at once. At most one shipment per (instance, holder) is under
way. A delta builds on the newest snapshot the holder has, if the source still has it;
without one the volume goes whole.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from cluster.state.apply_instances import expanded
from cluster.state.ha import ha_enabled, root_pool, settings
from cluster.state.model import State

DEFAULT_POOL = "default"
Key = tuple[str, str]  # (instance uid, holder member)
REPLICATED_TYPES = ("container", "virtual-machine")


@dataclass(frozen=True)
class Source:
    """One HA instance this member runs, as a shipment needs it (read under the lock)."""

    uid: str
    name: str
    pool: str
    epoch: int  # the placement epoch the holder checks
    interval: float
    holders: tuple[str, ...]
    vm: bool = False  # a virtual machine: its disk is sent (``vm.VmReplicas``)


@dataclass(frozen=True)
class Shipment:
    source: Source
    holder: str

    @property
    def key(self) -> Key:
        return (self.source.uid, self.holder)


def local_sources(state: State, member: str) -> list[Source]:
    """The HA instances ``member`` runs and has created, that have replica holders.
    A failover's target ships nothing until it has made the instance from its replica
    (``from_replica`` is cleared by its create report)."""
    found = []
    for inst in state.instances.values():
        if (inst.location != member or not inst.replicas or not inst.observed.created
                or inst.from_replica or inst.power == "Deleted"
                or inst.type not in REPLICATED_TYPES or not ha_enabled(state, inst)):
            continue
        devices = expanded(state, inst.config, inst.devices, inst.profiles)[1]
        found.append(Source(inst.uid, inst.name, root_pool(devices) or DEFAULT_POOL,
                            inst.epoch, settings(state, inst).interval,
                            tuple(sorted(m for m in inst.replicas if m != member)),
                            inst.type == "virtual-machine"))
    return found


def due(sources: Iterable[Source], began: Mapping[Key, float], busy: Collection[Key],
        now: float) -> list[Shipment]:
    """The shipments to start at ``now``: for each source and holder, none under way and
    none begun within the source's interval (``began``: when the last one began, on the
    same monotonic clock as ``now``)."""
    return [Shipment(source, holder) for source in sources for holder in source.holders
            if (source.uid, holder) not in busy
            and now - began.get((source.uid, holder), float("-inf")) >= source.interval]


def still_wanted(began: Mapping[Key, float], sources: Iterable[Source]) -> dict[Key, float]:
    """``began`` without the pairs no longer shipped (the instance left, the holder was
    replaced): the memory stays as small as the work."""
    wanted = {(s.uid, h) for s in sources for h in s.holders}
    return {key: at for key, at in began.items() if key in wanted}


def parent_for(held: Iterable[str]) -> str | None:
    """The parent of the next delta: the newest snapshot the holder has (names sort by
    age), None for a whole volume. The holder's newest is the last one this source sent
    it under this epoch, which the source keeps (``names.KEEP_SENT``); when the source no
    longer has it (it came from the member before a failover), ``send_replica`` sends
    the volume whole instead."""
    return max(held, default=None)
