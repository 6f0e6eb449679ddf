"""Instance drivers by instance type (Incus ``drivers/load.go``, Ganeti's hypervisor map).

The member's node asks the registry for the driver of an instance's type instead of
branching on which drivers it has: a type whose driver could not be loaded here (QEMU
not installed) is kept with the reason, and asking for it raises ``DriverError`` with
that reason, which the API answers as any other driver error.
"""

from __future__ import annotations

from collections.abc import Iterator

from node_agent.drivers.base import DriverError, InstanceDriver

CONTAINER, VM = "container", "virtual-machine"
_NOUNS = {CONTAINER: "Containers", VM: "Virtual machines"}


class DriverRegistry:
    """The drivers of one member, one per instance type, and why a type has none."""

    def __init__(self) -> None:
        self._drivers: dict[str, InstanceDriver] = {}
        self._missing: dict[str, str] = {}

    def register(self, driver: InstanceDriver) -> None:
        """Serve ``driver.instance_type`` with ``driver``."""
        self._drivers[driver.instance_type] = driver
        self._missing.pop(driver.instance_type, None)

    def unavailable(self, instance_type: str, why: str) -> None:
        """This member has no driver for ``instance_type``: ``why`` (a probe's error)."""
        self._drivers.pop(instance_type, None)
        self._missing[instance_type] = why

    def get(self, instance_type: str) -> InstanceDriver:
        """The driver of ``instance_type``; DriverError saying why this member has none."""
        driver = self._drivers.get(instance_type)
        if driver is None:
            noun = _NOUNS.get(instance_type, f"Instances of type {instance_type!r}")
            raise DriverError(f"{noun} are not available on this member: "
                              f"{self._missing.get(instance_type, 'no driver')}")
        return driver

    def has(self, instance_type: str) -> bool:
        return instance_type in self._drivers

    def problem(self, instance_type: str) -> str:
        """Why ``instance_type`` has no driver here ("" when it has one)."""
        return "" if self.has(instance_type) else self._missing.get(instance_type,
                                                                     "no driver")

    @property
    def types(self) -> list[str]:
        """The instance types this member runs, in registration order."""
        return list(self._drivers)

    def __iter__(self) -> Iterator[InstanceDriver]:
        return iter(list(self._drivers.values()))
