"""What an instance asks for and what a member has: CPUs, memory bytes, disk bytes.

``demand_of`` turns an instance's (expanded) config and devices into a :class:`Resources`
demand. Unset limits take the defaults below (LXD's defaults for virtual machines; for
containers, which LXD leaves unlimited, no CPU (CPU time is shared, as in LXD) and a small
memory and disk reservation, so that a cluster of unlimited containers still spreads and a
2-CPU member still takes hundreds of them). A bad value raises ``ValueError`` with a
message fit for a 400.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral_shared.units import UnitError, parse_size

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4

DIMENSIONS = ("cpu", "memory", "disk")


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of CPUs (may be fractional), memory bytes and disk bytes."""

    cpu: float = 0.0
    memory: int = 0
    disk: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.memory + other.memory,
                         self.disk + other.disk)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu - other.cpu, self.memory - other.memory,
                         self.disk - other.disk)

    def get(self, dimension: str) -> float:
        """The amount in one of ``DIMENSIONS``."""
        value: float = getattr(self, dimension)
        return value

    def fits_in(self, other: Resources) -> bool:
        """True when every dimension of ``self`` is at most that of ``other``."""
        return (self.cpu <= other.cpu and self.memory <= other.memory
                and self.disk <= other.disk)

    def shortfall(self, other: Resources) -> str | None:
        """The first dimension in which ``self`` does not fit in ``other``, else None."""
        for dimension in DIMENSIONS:
            if self.get(dimension) > other.get(dimension):
                return dimension
        return None


ZERO = Resources()


@dataclass(frozen=True, slots=True)
class AllocationRatios:
    """How far placement may commit a member beyond what it has, per dimension.

    CPU time is shared: ``limits.cpu`` is a ceiling, not a reservation, so LXD runs many
    ``limits.cpu=1`` instances on fewer cores (OpenStack Nova starts at a CPU ratio of 16).
    A member's schedulable amount is its capacity times the ratio. Disk is never
    overcommitted (a full filesystem loses data). ``NO_OVERCOMMIT`` (1, 1) is what a view
    built by hand means: its capacities are already what may be reserved.
    """

    cpu: float = 1.0
    memory: float = 1.0

    def get(self, dimension: str) -> float:
        """The ratio of one of ``DIMENSIONS`` (disk: always 1)."""
        return self.cpu if dimension == "cpu" else self.memory if dimension == "memory" \
            else 1.0

    def schedulable(self, capacity: Resources) -> Resources:
        """What placement may reserve on a member of ``capacity``; ratio 1 keeps the
        amount exactly (no float round trip of the memory bytes)."""
        if self.cpu == 1.0 and self.memory == 1.0:
            return capacity
        memory = capacity.memory if self.memory == 1.0 else int(capacity.memory * self.memory)
        return Resources(capacity.cpu * self.cpu, memory, capacity.disk)


NO_OVERCOMMIT = AllocationRatios()

DEFAULTS: dict[str, Resources] = {
    "container": Resources(cpu=0, memory=64 * MiB, disk=256 * MiB),
    "virtual-machine": Resources(cpu=1, memory=1 * GiB, disk=10 * GiB),
}
INSTANCE_TYPES = frozenset(DEFAULTS)


def format_amount(dimension: str, value: float) -> str:
    """``("memory", 3.1 GiB)`` -> ``"3.1 GiB"``; ``("cpu", 2)`` -> ``"2 CPUs"``."""
    if dimension == "cpu":
        text = _short(value)
        return f"{text} CPU" if text == "1" else f"{text} CPUs"
    return format_bytes(int(value))


def format_bytes(value: int) -> str:
    """Bytes in the largest binary unit that keeps at least 1: ``"512 MiB"``, ``"3.1 GiB"``."""
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(value) >= size:
            return f"{_short(value / size)} {unit}"
    return f"{value} B"


def _short(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def cpu_count(value: str) -> int:
    """CPUs named by ``limits.cpu``: a count (``"2"``) or a CPU set (``"0-3"``, ``"1,3"``)."""
    text = value.strip()
    if text.isdigit():
        if int(text) <= 0:
            raise ValueError(f"limits.cpu must be a positive number of CPUs, got {value!r}")
        return int(text)
    cpus: set[int] = set()
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"limits.cpu must be a CPU count or a CPU set like 0-1,3, "
                             f"got {value!r}")
        first, last = int(low), int(high) if sep else int(low)
        if last < first:
            raise ValueError(f"limits.cpu has a backwards CPU range {part.strip()!r}")
        cpus.update(range(first, last + 1))
    return len(cpus)


def memory_bytes(value: str, default: int) -> int:
    """Bytes of ``limits.memory``; a percentage (of a host not yet chosen) means ``default``."""
    text = value.strip()
    if text.endswith("%"):
        number = text[:-1]
        try:
            percent = float(number)
        except ValueError:
            percent = -1.0
        if not number or not 0 < percent <= 100:
            raise ValueError(f"limits.memory percentage must be in (0, 100], got {value!r}")
        return default
    return _positive_size("limits.memory", value)


def _positive_size(what: str, value: str) -> int:
    try:
        size = parse_size(value)
    except UnitError as exc:
        raise ValueError(f"{what}: {exc}") from exc
    if size <= 0:
        raise ValueError(f"{what} must be larger than zero, got {value!r}")
    return size


def root_disk(devices: dict[str, dict[str, str]]) -> dict[str, str] | None:
    """The root disk device (``type: disk``, ``path: /``), if any."""
    for device in devices.values():
        if device.get("type") == "disk" and device.get("path") == "/":
            return device
    return None


def demand_of(instance_type: str, config: dict[str, str],
              devices: dict[str, dict[str, str]]) -> Resources:
    """What an instance reserves on its member, from its expanded config and devices.

    Raises ``ValueError`` for an unknown instance type or a malformed ``limits.cpu``,
    ``limits.memory`` or root disk ``size``.
    """
    default = DEFAULTS.get(instance_type)
    if default is None:
        raise ValueError(f"unknown instance type {instance_type!r} "
                         f"(use {' or '.join(sorted(INSTANCE_TYPES))})")
    cpu_text = config.get("limits.cpu", "")
    memory_text = config.get("limits.memory", "")
    disk = root_disk(devices)
    size_text = disk.get("size", "") if disk is not None else ""
    return Resources(
        cpu=cpu_count(cpu_text) if cpu_text.strip() else default.cpu,
        memory=memory_bytes(memory_text, default.memory) if memory_text.strip()
        else default.memory,
        disk=_positive_size("root disk size", size_text) if size_text.strip() else default.disk,
    )
