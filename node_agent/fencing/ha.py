"""Which instances are HA (``cluster.ha=restart``, the instance's config over its
profiles'). Private until ``cluster.state.ha.ha_enabled`` is on main: then this module
goes and its callers use that."""

from __future__ import annotations

from cluster.state.apply_instances import expanded
from cluster.state.model import Instance, State

HA_KEY = "cluster.ha"


def ha_enabled(state: State, inst: Instance) -> bool:
    """Whether ``inst`` is HA: its expanded config says ``cluster.ha=restart``."""
    if HA_KEY in inst.config:
        return inst.config[HA_KEY] == "restart"
    return bool(inst.profiles) and expanded(
        state, inst.config, inst.devices, inst.profiles)[0].get(HA_KEY) == "restart"
