"""What a move intent records when it is created, worked out from the committed
instance: the API (``POST /1.0/instances/<n>?target=``) and the evacuation controller
both create move intents from it, so both move an instance the same way.
"""

from __future__ import annotations

from typing import Any

from cluster.state.apply_instances import expanded
from cluster.state.model import State
from cluster.state.validate import is_true

DEFAULT_DOWNTIME_MS = 300


class MoveRefused(Exception):
    """Why the instance cannot be moved (the API answers 400 with it)."""


def migration_downtime(config: dict[str, str]) -> int:
    """``migration.downtime`` in milliseconds (QEMU's default 300 ms when unset)."""
    return int(config.get("migration.downtime", "") or DEFAULT_DOWNTIME_MS)


def move_request(state: State, name: str, target: str, *, requested: str = "",
                 origin: str | None = None, live: bool = True,
                 parent: str = "") -> tuple[str, dict[str, Any]]:
    """The intent kind (``move`` or ``live_move``) and request of moving ``name`` to
    ``target``. ``origin`` is recorded as ``volatile.evacuate.origin`` at the switch
    (``""`` clears it). A running VM migrates live unless ``live`` is false; a running
    container with ``migration.stateful`` moves with its processes."""
    inst = state.instances.get(name)
    if inst is None:
        raise MoveRefused("Instance not found")
    if target == inst.location:
        raise MoveRefused(f"Instance {name} is already on member {target}")
    if target not in state.members:
        raise MoveRefused(f"Cluster member {target!r} not found")
    if inst.type == "virtual-machine" and inst.power == "Frozen":
        raise MoveRefused("Resume the virtual machine before moving it")
    config, _ = expanded(state, inst.config, inst.devices, inst.profiles)
    was_running = inst.power in ("Running", "Frozen")
    live_vm = inst.type == "virtual-machine" and inst.power == "Running" and live
    stateful = (inst.type == "container" and inst.power == "Running" and live
                and is_true(config.get("migration.stateful", "")))
    request: dict[str, Any] = {
        "name": name, "uid": inst.uid, "type": inst.type, "source": inst.location,
        "target": target, "requested": requested or target, "origin": origin,
        "was_running": was_running, "stateful": stateful, "parent": parent,
        "description": f"Migrating instance to {target}",
        "resources": {"instances": [f"/1.0/instances/{name}"]},
    }
    if live_vm:
        request["downtime_ms"] = migration_downtime(inst.config)
    return ("live_move" if live_vm else "move"), request
