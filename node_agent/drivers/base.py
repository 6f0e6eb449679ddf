"""The instance driver interface and its error tree.

::

    DriverError            any failure of a driver call (code: HTTP-ish status)
     +-- NotFound          the instance is unknown to the driver
     +-- InvalidState      the call does not fit the instance's current state

Drivers are blocking; the node agent calls them from worker threads. Foreign
errors (liblxc, subprocess) are translated here, once, with ``raise ... from``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from corral_shared.errors import CodedError
from corral_shared.instance_metrics import Sample


class DriverError(CodedError):
    code = 500


class NotFound(DriverError):
    code = 404


class InvalidState(DriverError):
    code = 400


@dataclass(frozen=True)
class DriverInfo:
    name: str
    version: str
    error: str = ""


@dataclass
class InstanceDefinition:
    """What a driver needs to (re)write an instance's runtime configuration.

    ``config`` and ``devices`` are already expanded (profiles applied).
    """

    name: str
    rootfs: Path
    config: dict[str, str] = field(default_factory=dict)
    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    volume: Path | None = None  # where a VM's disk lives: its directory on the storage pool


class InstanceDriver(Protocol):
    name: ClassVar[str]
    instance_type: ClassVar[str]
    supports_live_migration: ClassVar[bool]

    def probe(self) -> DriverInfo: ...

    def define(self, definition: InstanceDefinition) -> None: ...

    def start(self, name: str) -> None: ...

    def stop(self, name: str, force: bool, timeout: float) -> None: ...

    def freeze(self, name: str) -> None: ...

    def unfreeze(self, name: str) -> None: ...

    def delete(self, name: str) -> None: ...

    def rename(self, old: str, new: str) -> None: ...

    def status(self, name: str) -> str: ...

    def state(self, name: str) -> dict[str, Any]: ...

    def pid(self, name: str) -> int: ...

    def metric_samples(self, name: str) -> list[Sample]:
        """LXD's instance metrics of a running instance (``corral_shared.instance_metrics``),
        those the driver can read; NotFound if it is not defined, [] if it is not running."""
        ...

    def exec_argv(self, name: str, command: list[str], env: dict[str, str], cwd: str,
                  uid: int, gid: int) -> list[str]: ...

    def apply_limits(self, name: str, config: dict[str, str]) -> None: ...

    def log_path(self, name: str) -> Path: ...
