"""HA settings of an instance, and why they cannot be honoured: pure functions over state.

An instance is HA when its expanded config (profiles, then its own keys) says
``cluster.ha=restart``. Its root volume is then replicated to ``cluster.ha.replicas``
other members every ``cluster.ha.replication_interval`` seconds, and when its member goes
OFFLINE the failover controller starts it on a holder of a fresh enough replica
(``cluster.ha.max_lag`` seconds; empty: any replica, its age recorded), as Patroni's
``maximum_lag_on_failover`` decides which replica may be promoted.

The keys are validated with the other config keys (``validate.CONFIG_KEYS``); what needs
the cluster (enough other members that run the instance's type to hold the replicas, a
pool that can replicate) is ``ha_problem``, checked by apply when an
instance is created or changed and when a profile it uses changes.
"""

from __future__ import annotations

from collections.abc import Mapping

from cluster.state import validate
from cluster.state.apply_members import is_witness
from cluster.state.ha_keys import (
    HA_KEY,
    REPLICAS_KEY,
    REPLICATING_DRIVERS,
    HaSettings,
    settings_of,
)
from cluster.state.model import Instance, Member, State

__all__ = ["HA_KEY", "HaSettings", "ha_enabled", "ha_problem", "settings", "settings_of"]

def expanded_config(state: State, inst: Instance) -> dict[str, str]:
    """The instance's config with its profiles applied."""
    profiles = [{"config": state.profiles[p].config} for p in inst.profiles
                if p in state.profiles]
    return validate.expand(profiles, inst.config, {})[0]


def settings(state: State, inst: Instance) -> HaSettings:
    return settings_of(expanded_config(state, inst))


def ha_enabled(state: State, inst: Instance) -> bool:
    """Whether ``inst`` is HA (``cluster.ha=restart``, profiles applied)."""
    if inst.config.get(HA_KEY) == "restart":
        return True
    if not inst.profiles or HA_KEY in inst.config:
        return False
    return settings(state, inst).enabled


def can_hold(member: Member, kind: str) -> bool:
    """Whether ``member`` may hold a replica of (and so run) an instance of ``kind``: not
    a witness, and it runs that type. Its liveness is the controllers' concern."""
    return not is_witness(member) and kind in member.instance_types


def root_pool(devices: Mapping[str, Mapping[str, str]]) -> str:
    for device in devices.values():
        if device.get("type") == "disk" and device.get("path") == "/":
            return device.get("pool", "")
    return ""


def ha_problem(state: State, kind: str, location: str, config: Mapping[str, str],
               devices: Mapping[str, Mapping[str, str]]) -> str:
    """Why the HA asked by an expanded ``config`` cannot be honoured for an instance of
    ``kind`` on ``location``, or ``""`` (also when it asks for none)."""
    wanted = settings_of(config)
    if not wanted.enabled:
        return ""
    pool = state.storage_pools.get(root_pool(devices))
    if pool is not None and pool.driver not in REPLICATING_DRIVERS:
        return (f"cluster.ha=restart needs a storage pool that can replicate "
                f"({', '.join(REPLICATING_DRIVERS)}); pool {pool.name} is {pool.driver}")
    others = [m for m in state.members.values() if m.name != location and can_hold(m, kind)]
    if wanted.replicas > len(others):
        return (f"{REPLICAS_KEY}={wanted.replicas} needs as many other members that can run "
                f"a {kind}; this cluster has {len(others)}")
    return ""


def instance_ha_problem(state: State, inst: Instance) -> str:
    """``ha_problem`` for an existing instance (after a change of a profile it uses)."""
    profiles = [{"config": state.profiles[p].config, "devices": state.profiles[p].devices}
                for p in inst.profiles if p in state.profiles]
    config, devices = validate.expand(profiles, inst.config, inst.devices)
    return ha_problem(state, inst.type, inst.location, config, devices)


def lag(replica_synced_at: float, now: float) -> float | None:
    """How old a replica is at ``now`` (None: never synced)."""
    return None if replica_synced_at <= 0 else max(0.0, now - replica_synced_at)


def shipment_problem(inst: Instance, holder: str, source: object,
                     placement_epoch: object) -> str:
    """Why replica data of ``inst`` that ``source`` read under ``placement_epoch`` must
    neither reach holder ``holder`` nor be reported as held there, or ``""``. The holder
    asks this on fresh state before it accepts a byte, and apply asks it again of the
    report (``instance.replica_synced``): a source that a failover fenced (another
    member, a raised epoch) or a member no longer chosen as holder is refused."""
    if type(placement_epoch) is not int or placement_epoch != inst.epoch:
        return (f"Stale placement epoch {placement_epoch!r}: instance {inst.name} is under "
                f"epoch {inst.epoch} on {inst.location}")
    if source != inst.location:
        return f"Instance {inst.name} lives on {inst.location}, not {source}"
    if holder not in (inst.replicas or {}):
        return f"Member {holder!r} holds no replica of {inst.name}"
    return ""
