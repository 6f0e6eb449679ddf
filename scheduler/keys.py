"""The configuration keys the scheduler reads, their defaults, and their validators.

Validators return ``""`` or a problem, so the API (``PUT /1.0/cluster/members/...``,
``PUT /1.0``) can refuse a bad value with a 400 before it reaches the replicated state; the
view itself never raises and treats a bad value as unset.

Member config (LXD's names): ``scheduler.instance`` = all | manual | group, and corral's
``scheduler.capacity.cpu`` / ``.memory`` / ``.disk`` overriding what the agent reports.
Cluster config: ``cluster.scheduler.policy`` = spread | binpack, and placement groups
``placement.group.<name>.policy`` = spread | compact, ``placement.group.<name>.rigor`` =
strict | permissive. Instance config (LXD's name): ``placement.group`` = <name>.
"""

from __future__ import annotations

from node_agent.units import UnitError, parse_memory_limit, parse_size

MODE_KEY = "scheduler.instance"
MODES = ("all", "manual", "group")
CAPACITY_PREFIX = "scheduler.capacity."
POLICY_KEY = "cluster.scheduler.policy"
POLICIES = ("spread", "binpack")
INSTANCE_GROUP_KEY = "placement.group"
GROUP_PREFIX = "placement.group."
GROUP_POLICIES = ("spread", "compact")
GROUP_RIGORS = ("strict", "permissive")
DEFAULT_GROUP_RIGOR = "strict"


def group_key(name: str, field: str) -> str:
    """``("web", "policy")`` -> ``"placement.group.web.policy"``."""
    return f"{GROUP_PREFIX}{name}.{field}"


def split_group_key(key: str) -> tuple[str, str] | None:
    """``"placement.group.web.policy"`` -> ``("web", "policy")``; None for other keys."""
    if not key.startswith(GROUP_PREFIX):
        return None
    name, _, field = key[len(GROUP_PREFIX):].rpartition(".")
    return (name, field) if name and field in ("policy", "rigor") else None


def capacity_override(key: str, value: str, reported_memory: float) -> float | None:
    """The capacity a ``scheduler.capacity.*`` value sets, or None when it is invalid.

    cpu: a positive number; memory: a size (``"64GiB"``) or a percentage of the reported
    memory; disk: a size.
    """
    dimension = key[len(CAPACITY_PREFIX):]
    try:
        if dimension == "cpu":
            amount = float(value)
            return amount if amount > 0 and amount != float("inf") else None
        if dimension == "memory":
            if value.strip().endswith("%"):
                if reported_memory <= 0:
                    return None
                return float(parse_memory_limit(value, int(reported_memory)))
            size = parse_size(value)
            return float(size) if size > 0 else None
        if dimension == "disk":
            size = parse_size(value)
            return float(size) if size > 0 else None
    except (ValueError, UnitError):
        return None
    return None


def member_config_error(key: str, value: str) -> str:
    """The problem with a scheduler key of a member's config, or ``""`` (others: ``""``)."""
    if key == MODE_KEY:
        return "" if value in MODES else f"{key} must be one of {', '.join(MODES)}"
    if key.startswith(CAPACITY_PREFIX):
        if key[len(CAPACITY_PREFIX):] not in ("cpu", "memory", "disk"):
            return f"Unknown scheduler capacity key {key!r}"
        if value == "":
            return ""
        if capacity_override(key, value, reported_memory=float(2**40)) is None:
            kinds = {"cpu": "number", "memory": "size or percentage", "disk": "size"}
            return f"{key} must be a positive {kinds[key[len(CAPACITY_PREFIX):]]}"
    return ""


def cluster_config_error(key: str, value: str) -> str:
    """The problem with a scheduler key of the cluster config, or ``""`` (others: ``""``)."""
    if key == POLICY_KEY:
        return "" if value in ("", *POLICIES) else f"{key} must be one of {', '.join(POLICIES)}"
    if key.startswith(GROUP_PREFIX):
        parts = split_group_key(key)
        if parts is None:
            return (f"Invalid placement group key {key!r} "
                    f"(use placement.group.<name>.policy or .rigor)")
        allowed = GROUP_POLICIES if parts[1] == "policy" else GROUP_RIGORS
        if value not in ("", *allowed):
            return f"{key} must be one of {', '.join(allowed)}"
    return ""
