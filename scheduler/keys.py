"""The configuration keys the scheduler reads, their defaults, and their validators.

Validators return ``""`` or a problem, so the API (``PUT /1.0/cluster/members/...``,
``PUT /1.0``) can refuse a bad value with a 400 before it reaches the replicated state; the
view itself never raises and treats a bad value as unset.

Member config (LXD's names): ``scheduler.instance`` = all | manual | group, and corral's
``scheduler.capacity.cpu`` / ``.memory`` / ``.disk`` overriding what the agent reports.
Cluster config: ``cluster.scheduler.policy`` = spread | binpack, placement groups
``placement.group.<name>.policy`` = spread | compact, ``placement.group.<name>.rigor`` =
strict | permissive, and the allocation ratios ``scheduler.cpu_allocation_ratio`` (default
16) and ``scheduler.memory_allocation_ratio`` (default 1). Instance config (LXD's name):
``placement.group`` = <name>.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from corral_shared.resources import AllocationRatios
from corral_shared.units import UnitError, parse_memory_limit, parse_size

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
CPU_RATIO_KEY = "scheduler.cpu_allocation_ratio"
MEMORY_RATIO_KEY = "scheduler.memory_allocation_ratio"
# CPU: LXD overcommits CPU freely and Nova starts at 16; a limits.cpu=1 instance then
# takes 1/16 of a core from the schedulable total, so a 2-core host holds 32 of them.
# Memory is not shared the way CPU time is (an overcommitted host swaps or kills), so 1.
DEFAULT_RATIOS = AllocationRatios(cpu=16.0, memory=1.0)
# Below this a memory ratio leaves most of a host's memory unused: more likely a typo
# (0.15 for 1.5) than a wish, so it is refused rather than silently starving the cluster.
MIN_MEMORY_RATIO = 0.5


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


def ratio_value(key: str, value: str) -> float | None:
    """The allocation ratio ``value`` sets for ``key``, or None when it is invalid: a
    finite number above 0 (cpu) or at least ``MIN_MEMORY_RATIO`` (memory)."""
    try:
        ratio = float(value)
    except ValueError:
        return None
    if not math.isfinite(ratio) or ratio <= 0:
        return None
    if key == MEMORY_RATIO_KEY and ratio < MIN_MEMORY_RATIO:
        return None
    return ratio


def allocation_ratios(config: Mapping[str, str]) -> AllocationRatios:
    """The ratios the cluster config sets; an unset or invalid value takes its default
    (apply refuses invalid ones, so only an old state could hold one). O(1): the
    re-check in apply calls this for every placement."""
    cpu, memory = config.get(CPU_RATIO_KEY, ""), config.get(MEMORY_RATIO_KEY, "")
    return AllocationRatios(
        cpu=(ratio_value(CPU_RATIO_KEY, cpu) if cpu else None) or DEFAULT_RATIOS.cpu,
        memory=(ratio_value(MEMORY_RATIO_KEY, memory) if memory else None)
        or DEFAULT_RATIOS.memory)


def _ratio_error(key: str, value: str) -> str:
    if value == "" or ratio_value(key, value) is not None:
        return ""
    if key == MEMORY_RATIO_KEY:
        return (f"{key} must be a number of at least {MIN_MEMORY_RATIO:g} "
                f"(default {DEFAULT_RATIOS.memory:g}), got {value!r}")
    return f"{key} must be a positive number (default {DEFAULT_RATIOS.cpu:g}), got {value!r}"


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
    if key in (CPU_RATIO_KEY, MEMORY_RATIO_KEY):
        return _ratio_error(key, value)
    if key.startswith("scheduler."):  # a misspelt ratio would otherwise be ignored silently
        return (f"Unknown cluster scheduler key {key!r} (use {CPU_RATIO_KEY} or "
                f"{MEMORY_RATIO_KEY}; scheduler.instance and scheduler.capacity.* are "
                f"member keys: corral cluster set MEMBER KEY VALUE)")
    if key.startswith(GROUP_PREFIX):
        parts = split_group_key(key)
        if parts is None:
            return (f"Invalid placement group key {key!r} "
                    f"(use placement.group.<name>.policy or .rigor)")
        allowed = GROUP_POLICIES if parts[1] == "policy" else GROUP_RIGORS
        if value not in ("", *allowed):
            return f"{key} must be one of {', '.join(allowed)}"
    return ""
