"""Stopping what runs here when the host shuts down (SIGPWR), and starting it again after.

LXD's rule (its ``doc/daemon-behavior.md``): on SIGPWR the daemon stops every instance
cleanly, kills what has not stopped in time, and keeps the instances' recorded power
state, so that they run again once the host is back. Here:

- The desired state in the replicated store is not touched: the instances stay
  ``Running`` there (a host going down is not a user's stop), and the agent is closed
  before the stops, so it reports nothing about them.
- Each running or frozen instance of this member gets its clean stop (a container's halt
  signal, a VM's ACPI power button), all in parallel in worker threads, each within its
  own ``boot.host_shutdown_timeout`` (LXD's key; 30 s by default) and all within
  ``TOTAL_SECONDS``; the driver kills what is still up when its window ends.
- The uids about to be stopped are first written to ``$CORRAL_DIR/host-shutdown.json``
  (``Marks``).

When the daemon starts again the agent converges as always. After a reboot the host's boot
id has changed, and ``converge.plan_power`` starts what should run (``rebooted``). The
marks cover a daemon started again without a reboot (SIGPWR from a UPS daemon, an
administrator, a test): a marked instance that is found stopped is started again, like
one the self-fence stopped, instead of being taken for one that powered off by itself
(which would set its desired state to Stopped). A mark is dropped once the agent has
converged the instance's power, or finds the instance no longer lives here.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from node_agent.drivers.base import InstanceDriver

log = logging.getLogger(__name__)
MARKS_FILE = "host-shutdown.json"
TIMEOUT_KEY = "boot.host_shutdown_timeout"
DEFAULT_TIMEOUT = 30.0  # s, LXD's default for boot.host_shutdown_timeout
TOTAL_SECONDS = 300.0  # every clean stop ends within this; corral.service's TimeoutStopSec is above
MAX_PARALLEL = 64  # stop threads at once; the total still bounds a longer list
UP = ("Running", "Frozen")


class Host(Protocol):
    """What the stops need of ``LocalNode``."""

    def status(self, name: str, instance_type: str = "container") -> str: ...

    def driver_for(self, instance_type: str) -> InstanceDriver: ...


@dataclass(frozen=True)
class Target:
    """One instance of this member, as the stop needs it."""

    uid: str
    name: str  # on the host
    type: str
    timeout: float  # its own clean-stop window (``own_timeout``)


@dataclass(frozen=True)
class Outcome:
    """How one stop went: ``error`` "" if the instance is stopped."""

    name: str
    seconds: float
    error: str = ""


def own_timeout(config: Mapping[str, str]) -> float:
    """An instance's ``boot.host_shutdown_timeout`` (validated as an unsigned integer
    when set); the default when unset."""
    try:
        return float(int(config.get(TIMEOUT_KEY, "")))
    except ValueError:
        return DEFAULT_TIMEOUT


def clean_window(own: float, remaining: float) -> float:
    """How long a clean stop may take: its own timeout, within what is left of the
    total; 0 (the driver kills at once) when nothing is left."""
    return max(0.0, min(own, remaining))


def stop_one(host: Host, target: Target, deadline: float,
             clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Stop ``target`` cleanly within its window, killed after it (blocking)."""
    began = clock()
    try:
        if host.status(target.name, target.type) in UP:
            window = clean_window(target.timeout, deadline - began)
            host.driver_for(target.type).stop(target.name, False, window)
    except Exception as exc:  # noqa: BLE001 - one failure must not keep the others up
        return Outcome(target.name, clock() - began, str(exc) or type(exc).__name__)
    return Outcome(target.name, clock() - began)


def stop_all(host: Host, targets: Iterable[Target], total: float = TOTAL_SECONDS,
             clock: Callable[[], float] = time.monotonic) -> list[Outcome]:
    """Stop every target in parallel (blocking: one worker thread each, up to
    ``MAX_PARALLEL``), all clean windows ending within ``total`` seconds from now."""
    todo = list(targets)
    if not todo:
        return []
    deadline = clock() + total
    with ThreadPoolExecutor(max_workers=min(len(todo), MAX_PARALLEL),
                            thread_name_prefix="host-shutdown") as pool:
        return list(pool.map(lambda t: stop_one(host, t, deadline, clock), todo))


def shut_down(host: Host, marks: Marks, targets: Iterable[Target],
              total: float = TOTAL_SECONDS) -> list[Outcome]:
    """The host-shutdown stop: mark the targets that run, then stop them (``stop_all``;
    blocking). A failure to write the marks is logged and the stops go on: after a
    reboot the boot id starts them again anyway."""
    running = [t for t in targets if host.status(t.name, t.type) in UP]
    try:
        marks.add(t.uid for t in running)
    except OSError as exc:
        log.error("host shutdown: %s not written (%s); a daemon restarted without a "
                  "reboot will not start these instances again", marks.path, exc)
    return stop_all(host, running, total)


class Marks:
    """The uids a host shutdown stopped that the agent has not converged since, kept in
    ``state_dir/host-shutdown.json`` (in memory only when ``state_dir`` is None).
    Writes are blocking and serialised; a missing or unreadable file reads as none."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = None if state_dir is None else Path(state_dir) / MARKS_FILE
        self._lock = threading.Lock()
        self._uids: set[str] = read_marks(self.path) if self.path is not None else set()

    def __contains__(self, uid: object) -> bool:
        return uid in self._uids

    def __len__(self) -> int:
        return len(self._uids)

    def add(self, uids: Iterable[str]) -> None:
        """Mark ``uids`` (blocking; raises OSError if the file cannot be written)."""
        with self._lock:
            self._uids |= set(uids)
            self._write()

    def drop(self, uid: str) -> None:
        """Forget ``uid`` (blocking); a failed write is logged and retried next time."""
        with self._lock:
            if uid not in self._uids:
                return
            self._uids.discard(uid)
            try:
                self._write()
            except OSError as exc:
                log.warning("%s not rewritten: %s", self.path, exc)

    def _write(self) -> None:
        if self.path is None:
            return
        if not self._uids:
            self.path.unlink(missing_ok=True)
            return
        write_marks(self.path, self._uids)


def read_marks(path: Path) -> set[str]:
    """The uids in a marks file; none when it is missing or not one (logged)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        log.warning("%s unreadable, ignored: %s", path, exc)
        return set()
    uids = data.get("uids") if isinstance(data, dict) else None
    if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
        log.warning("%s is not a list of uids, ignored", path)
        return set()
    return set(uids)


def write_marks(path: Path, uids: Iterable[str]) -> None:
    """Replace the marks file whole: write a temporary file, fsync, rename (blocking)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"uids": sorted(uids)}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
