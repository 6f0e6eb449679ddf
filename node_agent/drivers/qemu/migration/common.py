"""What both sides of a VM's live migration share: the names of QEMU objects, the
deadlines, the errors, the target's address (``Incoming``), the figures of a finished
migration, and QMP helpers that turn failures into ``MigrationError``."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from node_agent.drivers.base import DriverError
from node_agent.drivers.qemu import qmp
from node_agent.drivers.qemu.driver import QemuDriver

DRIVE = "root"  # the -drive id in cmdline.qemu_argv
EXPORT = "root"  # the NBD export's name on the target
EXPORT_ID = "corral-migration"
MIRROR_JOB = "corral-migration"
NBD_NODE = "corral-migration-nbd"
TLS_CREDS = "corral-migration-tls"  # the tls-creds-x509 object, on both sides
TLS_DIR = "migration-tls"  # in the VM's directory, only while QEMU loads it
TLS_HOSTNAME = "corral-migration"  # a DNS SAN the target's certificate must carry
MAX_BANDWIDTH = 1 << 40  # bytes/s: unlimited in practice (QEMU 7.2 defaults to 32 MiB/s)
POLL = 0.02  # s between query-* polls (the guest is stopped while we poll pre-switchover)
PROGRESS_POLL = 0.05  # s between progress queries while a migration follows its events
STEP_TIMEOUT = 60.0  # s for one step that only waits on QEMU (a cancel, a mirror drain)
# query-migrate statuses of a migration still under way.
ACTIVE = frozenset({"setup", "active", "pre-switchover", "device", "wait-unplug",
                    "cancelling", "postcopy-active", "postcopy-paused",
                    "postcopy-recover"})

Progress = Callable[[dict[str, Any]], None]


class MigrationError(DriverError):
    """A live migration step failed (QEMU's message included)."""


@dataclass(frozen=True)
class Incoming:
    """Where a prepared target listens: sent from the target's member to the source's."""

    host: str
    migration_port: int
    nbd_port: int
    export: str
    accel: str = ""  # what the target's QEMU runs under ("": a target that did not say)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Incoming:
        """Raises MigrationError on a malformed document."""
        try:
            incoming = cls(data["host"], data["migration_port"], data["nbd_port"],
                           data["export"], data.get("accel", ""))
        except (KeyError, TypeError) as exc:
            raise MigrationError(f"invalid migration target {data!r}: {exc}") from exc
        ports_ok = all(type(port) is int and 0 < port < 65536
                       for port in (incoming.migration_port, incoming.nbd_port))
        texts_ok = all(isinstance(text, str) and text and "," not in text
                       for text in (incoming.host, incoming.export))
        if not (ports_ok and texts_ok) or incoming.accel not in ("", "kvm", "tcg"):
            raise MigrationError(f"invalid migration target {dict(data)!r}")
        return incoming

    def check_accelerator(self, name: str, ours: str) -> None:
        """Refuse up front a migration across accelerators: QEMU's CPU state under KVM
        (``-cpu host``) does not load under TCG (``-cpu max``), nor the other way round,
        and a failure half-way would cost the guest a pause. Raises MigrationError."""
        if self.accel and ours and self.accel != ours:
            raise MigrationError(
                f"cannot live-migrate VM {name!r}: it runs under {ours.upper()} here and "
                f"would run under {self.accel.upper()} on the target (QEMU's CPU state "
                f"does not cross accelerators); stop it and move it cold")

    @property
    def migration_uri(self) -> str:
        return f"tcp:{bracketed(self.host)}:{self.migration_port}"

@dataclass(frozen=True)
class MigrationStats:
    """What a finished migration cost. ``total_ms``: the whole ``migrate_out`` (disk mirror
    included); ``migration_ms``: QEMU's RAM migration alone; ``downtime_ms``: the guest
    stopped, as QEMU measured it (last RAM pages, last disk blocks, device state)."""

    total_ms: int
    migration_ms: int
    downtime_ms: int
    ram_bytes: int
    ram_total: int
    disk_bytes: int
    tls: bool = False  # QEMU's migration parameters named our TLS credentials

def parse_stats(reply: Mapping[str, Any], total_ms: int, disk_bytes: int,
                tls: bool = False) -> MigrationStats:
    """Stats from a completed ``query-migrate`` reply."""
    ram = reply.get("ram") or {}
    return MigrationStats(total_ms=total_ms, migration_ms=int(reply.get("total-time", 0)),
                          downtime_ms=int(reply.get("downtime", 0)),
                          ram_bytes=int(ram.get("transferred", 0)),
                          ram_total=int(ram.get("total", 0)), disk_bytes=disk_bytes, tls=tls)

def bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host

def free_port(host: str) -> int:
    """A TCP port free on ``host`` now (QEMU binds it a moment later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port

def call_qmp(driver: QemuDriver, name: str, doing: str, command: str,
             arguments: dict[str, Any] | None = None, timeout: float = qmp.TIMEOUT) -> Any:
    """One QMP command; a failure becomes MigrationError saying what we were doing."""
    try:
        return driver._qmp(name, command, arguments, timeout)
    except (qmp.QmpError, qmp.QmpUnavailable) as exc:
        raise MigrationError(f"VM {name!r}: {doing}: {exc}") from exc

def quietly(driver: QemuDriver, name: str, command: str,
            arguments: dict[str, Any] | None = None) -> Any:
    """A clean-up command whose failure (nothing to clean) is ignored."""
    try:
        return driver._qmp(name, command, arguments, 10.0)
    except (qmp.QmpError, qmp.QmpUnavailable):
        return None

def wait_until(what: str, deadline: float, poll: Callable[[], Any]) -> Any:
    """Call ``poll`` until it returns something truthy; MigrationError past ``deadline``."""
    while True:
        result = poll()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise MigrationError(f"timed out waiting for {what}")
        time.sleep(POLL)

def mirror_job(driver: QemuDriver, name: str) -> dict[str, Any] | None:
    jobs = call_qmp(driver, name, "query-jobs", "query-jobs")
    return next((job for job in jobs if job.get("id") == MIRROR_JOB), None)
