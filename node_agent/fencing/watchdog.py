"""The fencing watchdog: a process of its own that kills the member's HA instances when
the daemon's lease runs out, even when the daemon is frozen (SIGSTOP) or dead (kill -9)
while its containers and VMs keep running.

    python -m node_agent.fencing.watchdog STATE_DIR

Every ``timing.CHECK_PERIOD`` it reads ``STATE_DIR/fencing/lease.json`` (``lease_file``;
a missing or torn file leaves it with the last lease it read). Once ``time.monotonic()``
is past the lease's deadline it SIGKILLs every listed process whose start time still
matches (``proc.kill_if_same``: killing a container's init ends the container, and
liblxc's monitor records it stopped), logs each kill to ``fencing/watchdog.log`` and
appends it to ``fencing/fenced.json``. A new daemon overwrites the lease and the
watchdog follows it. It exits once the daemon named in the lease is gone and none of the
listed processes is alive any more (nothing is left to guard), or when it finds no lease
at all within ``NO_LEASE_GRACE``.

``ensure_watchdog`` starts it detached (``setsid --fork``: a new session, parented by
init, never a child the daemon must reap) or returns the one running; one watchdog per
state directory, held by a lock on ``fencing/watchdog.lock``. Imports only the stdlib and
this package's stdlib-only modules, so it is small and starts fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from node_agent.fencing import proc
from node_agent.fencing.lease_file import (
    Lease,
    Listed,
    fencing_dir,
    lease_path,
    read_lease,
    write_json_atomically,
)
from node_agent.fencing.timing import CHECK_PERIOD

log = logging.getLogger("corral.fencing.watchdog")
MODULE = "node_agent.fencing.watchdog"
NO_LEASE_GRACE = 5.0  # s a watchdog waits for a first lease before it gives up
RECORDS_KEPT = 200  # fenced.json keeps the newest kills
SPAWN_TIMEOUT = 10.0  # s for a started watchdog to write its pid file


def pid_file(state_dir: Path) -> Path:
    return fencing_dir(state_dir) / "watchdog.pid"


def log_file(state_dir: Path) -> Path:
    return fencing_dir(state_dir) / "watchdog.log"


def fenced_file(state_dir: Path) -> Path:
    return fencing_dir(state_dir) / "fenced.json"


class Watchdog:
    """What one watchdog knows and does; ``look`` is one check (tests drive it)."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.lease: Lease | None = None
        self.fenced: set[tuple[int, int]] = set()  # (pid, starttime) killed
        self.boot = proc.boot_id()
        self.started = clock()

    def look(self) -> bool:
        """Read the lease, fence if it ran out; False once there is nothing to guard."""
        now = self.clock()
        self._follow(read_lease(lease_path(self.state_dir)))
        lease = self.lease
        if lease is None:
            return now - self.started < NO_LEASE_GRACE
        if now > lease.deadline:
            self._fence(lease, now)
        return self._daemon_alive(lease) or any(
            proc.alive(i.pid, i.starttime) for i in lease.instances)

    def _follow(self, fresh: Lease | None) -> None:
        if fresh is None or fresh == self.lease or (fresh.boot_id and fresh.boot_id != self.boot):
            return
        if self.lease is None or fresh.daemon_pid != self.lease.daemon_pid:
            log.info("following the lease of daemon pid %d", fresh.daemon_pid)
        self.lease = fresh

    def _fence(self, lease: Lease, now: float) -> None:
        for inst in lease.instances:
            key = (inst.pid, inst.starttime)
            # Signalled again while it lives: SIGKILL is idempotent and a thaw may be due.
            if not proc.kill_if_same(inst.pid, inst.starttime) or key in self.fenced:
                continue
            self.fenced.add(key)
            log.warning("fenced %s %s: killed pid %d, %.3f s after the lease ran out "
                        "(daemon pid %d)", inst.kind, inst.name, inst.pid,
                        now - lease.deadline, lease.daemon_pid)
            self._record(inst, lease, now)

    def _record(self, inst: Listed, lease: Lease, now: float) -> None:
        path = fenced_file(self.state_dir)
        try:
            records = json.loads(path.read_text()) if path.exists() else []
        except (OSError, ValueError):
            records = []
        if not isinstance(records, list):
            records = []
        records.append({"name": inst.name, "kind": inst.kind, "pid": inst.pid,
                        "starttime": inst.starttime, "boot_id": self.boot,
                        "deadline": lease.deadline, "killed_at": now, "time": time.time(),
                        "daemon_pid": lease.daemon_pid})
        try:
            write_json_atomically(path, records[-RECORDS_KEPT:])
        except OSError as exc:
            log.error("could not record the fence of %s: %s", inst.name, exc)

    @staticmethod
    def _daemon_alive(lease: Lease) -> bool:
        start = proc.starttime(lease.daemon_pid)
        return start is not None and lease.daemon_starttime in (0, start)


def run(state_dir: Path) -> int:
    """The watchdog's life: take the lock, write the pid file, look until done."""
    directory = fencing_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    lock = os.open(directory / "watchdog.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another watchdog guards this directory
    _write_pid(pid_file(state_dir))
    log.info("watchdog pid %d guards %s", os.getpid(), state_dir)
    dog = Watchdog(state_dir)
    next_look = time.monotonic()
    while dog.look():
        next_look = max(next_look + CHECK_PERIOD, time.monotonic())
        time.sleep(max(0.0, next_look - time.monotonic()))
    log.info("watchdog pid %d exits: nothing left to guard", os.getpid())
    return 0


def _write_pid(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def running_watchdog(state_dir: Path) -> int:
    """The pid of the watchdog that guards ``state_dir``, 0 if none runs."""
    pid = _read_pid(pid_file(state_dir))
    if proc.starttime(pid) is None:
        return 0
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return 0
    wanted = [MODULE.encode(), str(Path(state_dir).absolute()).encode()]
    return pid if all(part in argv for part in wanted) else 0


def ensure_watchdog(state_dir: Path) -> int:
    """The pid of the watchdog guarding ``state_dir``, started first if none runs
    (blocking: up to ``SPAWN_TIMEOUT``). Raises OSError when it cannot be started."""
    state_dir = Path(state_dir).absolute()
    pid = running_watchdog(state_dir)
    if pid:
        return pid
    fencing_dir(state_dir).mkdir(parents=True, exist_ok=True)
    before = _read_pid(pid_file(state_dir))
    root = str(Path(__file__).resolve().parents[2])  # where node_agent is importable
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
    try:
        with open(log_file(state_dir), "ab") as out:
            subprocess.run(["setsid", "--fork", sys.executable, "-m", MODULE, str(state_dir)],
                           stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                           cwd="/", check=True, timeout=SPAWN_TIMEOUT)
    except subprocess.SubprocessError as exc:
        raise OSError(f"could not start the fencing watchdog: {exc}") from exc
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while time.monotonic() < deadline:
        # Ours (or one that beat it to the lock); a new pid that exited already had
        # nothing left to guard: its work was done before we looked.
        pid = running_watchdog(state_dir) or _read_pid(pid_file(state_dir))
        if pid and pid != before:
            return pid
        time.sleep(0.02)
    raise OSError(f"the fencing watchdog for {state_dir} did not start "
                  f"(see {log_file(state_dir)})")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: python -m {MODULE} STATE_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        return run(Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
