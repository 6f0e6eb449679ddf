"""Records of the replicated state rendered in LXD's JSON shapes (pure)."""

from __future__ import annotations

from typing import Any

from cluster.api.op_registry import rfc3339
from cluster.state import ha_keys
from cluster.state.apply_instances import expanded
from cluster.state.model import Image, Instance, Profile, Snapshot, State
from corral_shared.codes import code_of


def instance(state: State, inst: Instance, status: str,
             now: float | None = None) -> dict[str, Any]:
    """LXD's Instance, plus ``ha`` (a corral extension) for an HA instance: replica
    ages are judged at ``now`` (this member's clock; none without it). An HA instance
    whose failover waits shows status Error, the reason in ``ha.waiting``."""
    config, devices = expanded(state, inst.config, inst.devices, inst.profiles)
    if inst.ha_waiting and status != "Running":
        status = "Error"
    found = {
        "name": inst.name, "type": inst.type, "architecture": inst.architecture,
        "config": dict(inst.config), "devices": dict(inst.devices),
        "profiles": list(inst.profiles), "ephemeral": inst.ephemeral, "stateful": inst.stateful,
        "description": inst.description, "created_at": rfc3339(inst.created_at),
        "last_used_at": rfc3339(inst.last_used_at), "expanded_config": config,
        "expanded_devices": devices, "status": status,
        "status_code": code_of(status), "location": inst.location,
        "project": "default",
    }
    if inst.replicas or inst.ha_waiting or inst.failover or ha_keys.settings_of(config).enabled:
        found["ha"] = ha_view(inst, config, now)
    return found


def ha_view(inst: Instance, config: dict[str, str], now: float | None) -> dict[str, Any]:
    """The instance's HA state: its placement epoch, each replica and its age (``lag``,
    seconds; None when never synced or no ``now``), why a failover waits, the last one."""
    replicas = [{"member": r.member, "snapshot": r.snapshot, "epoch": r.epoch,
                 "synced_at": rfc3339(r.synced_at) if r.synced_at else "",
                 "lag": None if now is None or not r.synced_at
                 else round(max(0.0, now - r.synced_at), 3), "bytes": r.bytes}
                for r in (inst.replicas or {}).values()]
    wanted = ha_keys.settings_of(config)
    return {"mode": "restart" if wanted.enabled else "none", "epoch": inst.epoch,
            "replicas_wanted": wanted.replicas if wanted.enabled else 0,
            "replication_interval": wanted.interval, "replicas": replicas,
            "waiting": inst.ha_waiting, "last_failover": dict(inst.failover or {})}


def snapshot(inst: Instance, snap: Snapshot) -> dict[str, Any]:
    return {
        "name": snap.name, "architecture": inst.architecture, "config": dict(snap.config),
        "devices": dict(snap.devices), "profiles": list(snap.profiles), "ephemeral": False,
        "stateful": snap.stateful, "description": snap.description,
        "created_at": rfc3339(snap.created_at), "last_used_at": rfc3339(0),
        "expires_at": rfc3339(snap.expires_at), "expanded_config": dict(snap.config),
        "expanded_devices": dict(snap.devices), "size": -1,
    }


def image(state: State, img: Image) -> dict[str, Any]:
    info = img.info
    return {
        "fingerprint": img.fingerprint, "filename": info.get("filename", ""),
        "size": info.get("size", 0), "architecture": info.get("architecture", "x86_64"),
        "type": info.get("type", "container"), "properties": dict(info.get("properties", {})),
        "public": img.public, "auto_update": False, "cached": False, "profiles": ["default"],
        "aliases": [{"name": a.name, "description": a.description}
                    for a in state.aliases.values() if a.target == img.fingerprint],
        "created_at": rfc3339(float(info.get("created_at", 0) or 0)),
        "expires_at": rfc3339(float(info.get("expires_at", 0) or 0)),
        "uploaded_at": rfc3339(img.uploaded_at), "last_used_at": rfc3339(img.last_used_at),
        "update_source": None,
    }


def profile(state: State, prof: Profile) -> dict[str, Any]:
    return {
        "name": prof.name, "description": prof.description, "config": dict(prof.config),
        "devices": dict(prof.devices),
        "used_by": [f"/1.0/instances/{i.name}" for i in state.instances.values()
                    if prof.name in i.profiles],
    }
