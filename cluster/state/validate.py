"""Pure validation of names, configuration keys and devices, shared by the
API (early, for clear errors) and ``apply`` (again, as the last word)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cluster.state.ha_keys import CONFIG_KEYS as HA_CONFIG_KEYS
from corral_shared.liveness import MIN_OFFLINE_THRESHOLD
from corral_shared.units import parse_size
from scheduler import keys

_HOSTNAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,62}$")
_ENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def instance_name_error(name: object) -> str:
    """LXD's rule: a valid hostname of 1-63 letters, digits and dashes."""
    if not isinstance(name, str) or not name:
        return "Instance name cannot be empty"
    if len(name) > 63:
        return "Instance name must be 1-63 characters long"
    if not _HOSTNAME.match(name):
        if name[0].isdigit() or name[0] == "-":
            return "Instance name must not start with a digit or a dash"
        return "Instance name may only contain letters, numbers and dashes"
    if name.endswith("-"):
        return "Instance name must not end with a dash"
    return ""


def entity_name_error(kind: str, name: object) -> str:
    """Names of profiles, snapshots and aliases: no slashes, no spaces, no dots only."""
    if not isinstance(name, str) or not name:
        return f"{kind} name cannot be empty"
    if name in (".", "..") or not _ENTITY.match(name):
        return f"Invalid {kind.lower()} name {name!r}"
    return ""


def _bool(value: str) -> str:
    allowed = ("true", "false", "1", "0", "yes", "no", "on", "off")
    return "" if value in allowed else "must be a boolean"


def is_true(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "on")


def _uint(value: str) -> str:
    return "" if value.isdigit() else "must be a non-negative integer"


def _positive(value: str) -> str:
    return "" if value.isdigit() and int(value) > 0 else "must be a positive integer"


def _cpu(value: str) -> str:
    if value.isdigit():
        return "" if int(value) > 0 else "must be a positive number of CPUs"
    return "" if _CPUSET.match(value) else "must be a CPU count or a CPU set like 0-1,3"


def _memory(value: str) -> str:
    if value.endswith("%"):
        number = value[:-1]
        return "" if number.isdigit() and 0 < int(number) <= 100 else "invalid percentage"
    try:
        return "" if parse_size(value) > 0 else "must be positive"
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad value
        return str(exc)


def _choice(*allowed: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        return "" if value in allowed else f"must be one of {', '.join(allowed)}"

    return check


def _any(value: str) -> str:
    return ""


CONFIG_KEYS: dict[str, Callable[[str], str]] = {
    "limits.cpu": _cpu,
    "limits.memory": _memory,
    "limits.processes": _positive,
    "security.privileged": _bool,
    "security.nesting": _bool,
    "boot.autostart": _bool,
    "boot.autostart.delay": _uint,
    "boot.autostart.priority": _uint,
    "boot.host_shutdown_timeout": _uint,
    "cluster.evacuate": _choice("auto", "migrate", "live-migrate", "stop"),
    "migration.downtime": _positive,  # ms a live migration may stop the guest (VMs)
    "migration.stateful": _bool,  # containers: checkpointable by CRIU (no console)
    "placement.group": lambda value: entity_name_error("Placement group", value),
}
CONFIG_KEYS.update(HA_CONFIG_KEYS)
FREE_PREFIXES = ("user.", "environment.", "image.", "volatile.")


def config_error(config: object) -> str:
    """The first problem in an instance or profile config, or ``""``."""
    if not isinstance(config, dict):
        return "Config must be a mapping of strings"
    for key, value in config.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return f"Config values must be strings (key {key!r})"
        if key.startswith(FREE_PREFIXES):
            continue
        check = CONFIG_KEYS.get(key)
        if check is None:
            return f"Unknown configuration key: {key}"
        if value == "":
            continue
        problem = check(value)
        if problem:
            return f"Invalid value for configuration key {key!r}: {problem}"
    return ""


def member_config_error(config: object) -> str:
    """The first problem in a cluster member's config (LXD's member keys), or ``""``."""
    if not isinstance(config, dict):
        return "Member config must be a mapping of strings"
    for key, value in config.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return f"Config values must be strings (key {key!r})"
        if key.startswith("user."):
            continue
        if key != keys.MODE_KEY and not key.startswith(keys.CAPACITY_PREFIX):
            return f"Unknown member configuration key: {key}"
        problem = keys.member_config_error(key, value)
        if problem:
            return f"Invalid value for member configuration key {key!r}: {problem}"
    return ""


def cluster_config_error(config: dict[str, str]) -> str:
    """The first problem with the scheduler's keys in the cluster config, or ``""``."""
    for key, value in config.items():
        problem = keys.cluster_config_error(key, value) or _cluster_key_error(key, value)
        if problem:
            return problem
    return ""


def _cluster_key_error(key: str, value: str) -> str:
    """Numbers that members read from the cluster config: refused when they are not
    numbers, rather than silently replaced by the default."""
    if value == "":
        return ""
    if key == "cluster.offline_threshold":
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not seconds >= MIN_OFFLINE_THRESHOLD:
            return f"{key} must be a number of seconds, at least {MIN_OFFLINE_THRESHOLD:g}"
    if key == "cluster.max_voters" and not (value.isdigit() and int(value) >= 1):
        return f"{key} must be a whole number, at least 1"
    return ""


DEVICE_KEYS: dict[str, set[str]] = {
    "disk": {"path", "pool", "source", "size", "readonly"},
    "nic": {"nictype", "network", "parent", "name", "hwaddr", "mtu", "host_name"},
    "none": set(),
}


def devices_error(devices: object) -> str:
    """The first problem in a devices mapping, or ``""``."""
    if not isinstance(devices, dict):
        return "Devices must be a mapping"
    for name, device in devices.items():
        if not isinstance(name, str) or not name or "/" in name:
            return f"Invalid device name {name!r}"
        if not isinstance(device, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in device.items()
        ):
            return f"Device {name!r} must be a mapping of strings"
        kind = device.get("type", "")
        if kind not in DEVICE_KEYS:
            return f"Device {name!r} has an unsupported type {kind!r}"
        unknown = set(device) - DEVICE_KEYS[kind] - {"type"}
        if unknown:
            return f"Device {name!r}: unknown key {sorted(unknown)[0]!r}"
        if kind == "nic" and device.get("nictype", "bridged") != "bridged":
            return f"Device {name!r}: only bridged NICs are supported"
        if kind == "disk" and device.get("path") != "/" :
            return f"Device {name!r}: only the root disk (path /) is supported"
    return ""


def expand(profiles: list[dict[str, Any]], config: dict[str, str],
           devices: dict[str, dict[str, str]]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """LXD's expansion: profiles in order, then the instance's own keys on top."""
    out_config: dict[str, str] = {}
    out_devices: dict[str, dict[str, str]] = {}
    for profile in profiles:
        out_config.update(profile.get("config", {}))
        out_devices.update(profile.get("devices", {}))
    out_config.update(config)
    out_devices.update(devices)
    return out_config, out_devices
