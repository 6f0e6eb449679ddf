"""The HA chaos driver: HA containers and an HA VM with counters on a real dev cluster, a
host at a time killed, cut off or frozen, everything recorded for the HA checker
(``ha_checker``).

::

    sampler (a thread, every 100 ms)            faults, one after another (this thread)
      /proc (devtools.ha_probe): each             kill-host  kill -9 of the whole host .. start
      [lxc monitor] ROOT/containers NAME and      partition  cut off both ways ........ heal
      QEMU -pidfile ROOT/vms/NAME/qemu.pid        pause      SIGSTOP of its daemon .... CONT
      -> which hosts run NAME -> Sample           each on the host running the most HA
                     \\                            instances (in the first round: of those
                      \\                           running the VM), held until they run
                       \\                          elsewhere
                        \\                         (the API of a healthy member, and /proc)
                         +--> check(samples, failovers, returns) <--+
                                                  Failover: old host's last counter (its
                                                    rootfs, once the old copy is gone), the
                                                    new copy's starting value, interval,
                                                    detection (fault -> old copy gone)
                                                  Return: the host back (restarted, healed,
                                                    continued) until the next fault

Each container writes ``/counter`` every 100 ms from a loop its boot script starts
(``COUNTER``), so a promoted replica counts on from the value it holds; each boot appends
the value it starts from to ``/starts``. The counters are read on the hosts' disks
(``rootfs``), not through corral.

The VM (``VM``, TCG here) runs the same loop on its root disk (``/mnt/root``, synced each
tick: ``VM_COUNTER``). Its guest boots from an initramfs that runs nothing of the disk, so
the driver starts the loop again after each failover (through the exec agent), once it has
read the value the promoted replica holds. The old copy's last write is read from its
qcow2 on the old host's disk (``qemu-img convert``, ``e2fsck`` to replay its journal,
``debugfs``; once the old QEMU is gone). The first round's faults all hit the VM's host,
so each fault kind moves it.

After each fault the driver waits until the host is ONLINE again, has removed its stale
copies and every HA instance has a replica shipped under its current placement epoch, so
the next fault finds a replica to promote.
"""

from __future__ import annotations

import contextlib
import math
import random
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from devtools import nemesis
from devtools.ha_probe import hosts_running
from devtools.harness import DaemonProcess
from devtools.host_kill import read_procs
from tests.chaos.api import request
from tests.chaos.faults import Nemesis
from tests.chaos.ha_checker import Failover, Return, Sample

FAULTS = ("kill-host", "partition", "pause")
UNDONE = {"kill-host": "started again", "partition": "healed", "pause": "SIGCONT"}
INSTANCES = 3
IMAGE = "busybox"
VM = "havm1"
VM_IMAGE = "busybox-vm"
VM_BOOT_TIMEOUT = 120.0  # until its exec agent answers (TCG boots in ~2.5 s when idle)
PERIOD = 0.1  # seconds between two samples
FAILOVER_TIMEOUT = 60.0
BACK_TIMEOUT = 60.0
REPLICA_TIMEOUT = 60.0
COUNTER = """#!/bin/sh
# corral HA chaos: count every 100 ms in the rootfs, on from the value found at boot.
n=$(cat /counter 2>/dev/null)
case "$n" in ''|*[!0-9]*) n=0 ;; esac
echo "$n" >> /starts
while :; do
    n=$((n + 1))
    echo "$n" > /counter.new && mv /counter.new /counter
    sleep 0.1
done
"""
SETUP = ("printf '%s' \"$1\" > /counter.sh && chmod 755 /counter.sh && "
         "{ grep -v '^exit 0$' /etc/init.d/rcS; "
         "echo '/counter.sh </dev/null >/dev/null 2>&1 &'; echo 'exit 0'; } > /tmp/rcS && "
         "cat /tmp/rcS > /etc/init.d/rcS || exit 1; "
         "setsid /counter.sh </dev/null >/dev/null 2>&1 &")
"""Run as ``sh -c SETUP sh COUNTER`` in the container: the script, its line in the boot
script, and the first run now (a command sent to the background reads no stdin, so
the script comes as an argument)."""
VM_COUNTER = (COUNTER.replace("/counter", "/mnt/root/counter")
              .replace("/starts", "/mnt/root/starts")
              .replace("/mnt/root/counter\n", "/mnt/root/counter; sync\n"))
VM_SETUP = ("printf '%s' \"$1\" > /mnt/root/counter.sh && chmod 755 /mnt/root/counter.sh "
            "|| exit 1; setsid /mnt/root/counter.sh </dev/null >/dev/null 2>&1 &")
"""Run as ``sh -c VM_SETUP sh VM_COUNTER`` in the VM: the loop kept on its disk, started."""
VM_RESTART = "setsid /mnt/root/counter.sh </dev/null >/dev/null 2>&1 &"


# ---- pure parts ------------------------------------------------------------------------

def pick_target(placement: Mapping[str, tuple[str, ...]], rng: random.Random,
                prefer: tuple[str, ...] = ()) -> str | None:
    """The host running the most instances (ties drawn by ``rng``), among those running
    one of ``prefer`` if any does; None if none runs."""
    counts: dict[str, int] = {}
    for hosts in placement.values():
        for host in hosts:
            counts[host] = counts.get(host, 0) + 1
    preferred = {h for name in prefer for h in placement.get(name, ())}
    if preferred:
        counts = {h: n for h, n in counts.items() if h in preferred}
    if not counts:
        return None
    most = max(counts.values())
    return rng.choice(sorted(h for h, n in counts.items() if n == most))


def detection(samples: list[Sample], instance: str, host: str, since: float) -> float | None:
    """Seconds from ``since`` to the first sample that no longer shows ``instance`` on
    ``host`` (an upper bound of when the old copy stopped writing); None if none does."""
    for s in samples:
        if s.instance == instance and s.t >= since and host not in s.hosts:
            return s.t - since
    return None


# ---- the run ---------------------------------------------------------------------------

@dataclass
class HaRun:
    members: dict[str, DaemonProcess]
    instances: list[str]
    rng: random.Random
    samples: list[Sample] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)
    returns: list[Return] = field(default_factory=list)
    faults: int = 0
    problems: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)

    @property
    def directory(self) -> Path:
        return next(iter(self.members.values())).root.parent

    def note(self, line: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:6.1f} {line}")

    def placement(self) -> dict[str, tuple[str, ...]]:
        """The hosts each instance runs on in the newest sample."""
        with self.lock:
            return {s.instance: s.hosts for s in self.samples[-len(self.instances):]}

    def seen(self) -> list[Sample]:
        with self.lock:
            return list(self.samples)


def sample_loop(run: HaRun) -> None:
    """Every PERIOD: which hosts run each HA instance, from /proc (a container's
    ``[lxc monitor]``, a VM's QEMU: ``devtools.ha_probe``)."""
    roots = {name: m.root for name, m in run.members.items()}
    while not run.stop.wait(PERIOD):
        procs = read_procs()
        now = time.monotonic()
        found = [Sample(now, name, tuple(hosts_running(procs, roots, name)))
                 for name in run.instances]
        with run.lock:
            run.samples += found


def until(predicate: Callable[[], Any], timeout: float, period: float = 0.2) -> Any:
    """``predicate()``'s first true value, or None after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found or time.monotonic() > deadline:
            return found or None
        time.sleep(period)


def get(run: HaRun, path: str, avoid: str = "") -> Any:
    """``GET path`` from the first member other than ``avoid`` that answers 200."""
    for name in sorted(run.members, key=lambda n: (n == avoid, n)):
        if name == avoid:
            continue
        answer = request(run.members[name], "GET", path, timeout=5.0)
        if answer.status == 200:
            return answer.doc.get("metadata")
    return None


def instances_view(run: HaRun, avoid: str = "") -> dict[str, dict[str, Any]]:
    listing = get(run, "/1.0/instances?recursion=1", avoid) or []
    return {i["name"]: i for i in listing if i.get("name") in run.instances}


def member_statuses(run: HaRun, avoid: str = "") -> dict[str, str]:
    return {m["server_name"]: m.get("status", "")
            for m in get(run, "/1.0/cluster/members?recursion=1", avoid) or []}


def leader(run: HaRun) -> str:
    return next((m["server_name"] for m in get(run, "/1.0/cluster/members?recursion=1") or []
                 if "database-leader" in m.get("roles", [])), "")


def rootfs(member: DaemonProcess, name: str) -> Path | None:
    found = sorted(member.root.glob(f"storage-pools/*/containers/{name}/rootfs"))
    return found[0] if found else None


def vm_disk(member: DaemonProcess, name: str) -> Path | None:
    found = sorted(member.root.glob(f"storage-pools/*/virtual-machines/{name}/root.qcow2"))
    return found[0] if found else None


def has_copy(member: DaemonProcess, name: str) -> bool:
    """Whether ``member`` still holds ``name``: a container's rootfs, a VM's runtime
    directory or disk (the dir pool is on the host's own file system)."""
    if name == VM:
        return (member.root / "vms" / name).exists() or vm_disk(member, name) is not None
    return rootfs(member, name) is not None


def vm_file(disk: Path, file: str) -> str:
    """``file`` of the ext4 inside the qcow2 ``disk`` (its QEMU gone: read without the
    lock, through a raw copy in a scratch directory whose journal ``e2fsck`` replays
    first: the guest's last synced writes may be in the journal only)."""
    with tempfile.TemporaryDirectory(prefix="ha-chaos-") as scratch:
        raw = Path(scratch) / "root.raw"
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(disk), str(raw)],
                       check=True, capture_output=True, timeout=120)
        fsck = subprocess.run(["e2fsck", "-fy", str(raw)], check=False, capture_output=True,
                              timeout=120)
        if fsck.returncode & ~3:  # 1, 2: corrected (a replayed journal among them)
            raise subprocess.SubprocessError(f"e2fsck {fsck.returncode}: {fsck.stdout!r}")
        done = subprocess.run(["debugfs", "-R", f"cat /{file}", str(raw)], check=True,
                              capture_output=True, timeout=60)
        return done.stdout.decode(errors="replace")


def read_int(member: DaemonProcess, name: str, file: str, last_line: bool = False) -> int | None:
    """A counter file of ``name`` on ``member``'s disk (None: absent or unreadable)."""
    try:
        if name == VM:
            disk = vm_disk(member, name)
            text = vm_file(disk, file) if disk is not None else ""
        else:
            base = rootfs(member, name)
            text = (base / file).read_text() if base is not None else ""
        lines = text.split()
        return int(lines[-1] if last_line else lines[0]) if lines else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def vm_exec(run: HaRun, via: str, script: str, *args: str,
            timeout: float = VM_BOOT_TIMEOUT) -> str | None:
    """``sh -c script sh args``'s output in the VM once its exec agent answers, asked
    through member ``via`` (not a faulted one); None if it never did."""
    deadline = time.monotonic() + timeout
    while True:
        done = run.members[via].corral("exec", VM, "--", "sh", "-c", script, "sh", *args,
                             check=False, timeout=60)
        if done.returncode == 0:
            return done.stdout.decode().strip()
        if time.monotonic() > deadline:
            run.problems.append(f"{VM}: exec {script!r} failed for {timeout:g} s: "
                                f"{done.stderr.decode(errors='replace').strip()}")
            return None
        time.sleep(0.5)


def vm_int(run: HaRun, via: str, file: str, last_line: bool = False) -> int | None:
    text = vm_exec(run, via, f"cat /mnt/root/{file}")
    lines = (text or "").split()
    try:
        return int(lines[-1] if last_line else lines[0]) if lines else None
    except ValueError:
        return None


def fresh_replicas(run: HaRun, since: float, avoid: str = "") -> list[str]:
    """The instances without a complete replica, on an ONLINE member other than theirs,
    shipped under their current epoch and after ``since`` (monotonic)."""
    view, statuses = instances_view(run, avoid), member_statuses(run, avoid)
    missing = []
    for name in run.instances:
        inst = view.get(name, {})
        ha = inst.get("ha") or {}
        if not any(r.get("snapshot") and r.get("epoch") == ha.get("epoch")
                   and r.get("member") != inst.get("location")
                   and statuses.get(r.get("member", "")) == "Online"
                   and r.get("lag") is not None and r["lag"] < time.monotonic() - since
                   for r in ha.get("replicas", [])):
            missing.append(name)
    return missing


def launch(run: HaRun) -> None:
    """One HA container with its counter per member (round robin) and the HA VM with its
    counter on the first member, each replicated."""
    first = next(iter(run.members.values()))
    first.corral("image", "build", IMAGE, timeout=300)
    first.corral("image", "build", IMAGE, "--vm", timeout=300)
    hosts = sorted(run.members)
    for i, name in enumerate(n for n in run.instances if n != VM):
        first.corral("launch", IMAGE, name, "--target", hosts[i % len(hosts)],
                     "-c", "cluster.ha=restart", timeout=180)
        first.corral("exec", name, "--", "sh", "-c", SETUP, "sh", COUNTER, timeout=60)
    if VM in run.instances:
        first.corral("launch", VM_IMAGE, VM, "--vm", "--target", hosts[0],
                     "-c", "limits.memory=256MiB", "-d", "root,size=1GiB",  # small pools
                     "-c", "cluster.ha=restart", timeout=300)
        if vm_exec(run, hosts[0], VM_SETUP, VM_COUNTER) is None:
            raise AssertionError(f"{VM}'s counter could not be started: {run.problems}")
    counting = time.monotonic()
    missing = until(lambda: fresh_replicas(run, counting) == [] or None, REPLICA_TIMEOUT)
    if missing is None:
        raise AssertionError(f"no replica shipped after the counters started: "
                             f"{fresh_replicas(run, counting)}")
    run.note(f"{len(run.instances)} HA instances counting, replicated: "
             f"{dict(sorted(run.placement().items()))}")


def inject(run: HaRun, kind: str, host: str) -> None:
    if kind == "kill-host":
        nemesis.kill(run.directory, host, "KILL", host=True)
    elif kind == "partition":
        nemesis.partition(run.directory, [host])
    else:
        nemesis.kill(run.directory, host, "STOP")


def undo(run: HaRun, kind: str, host: str) -> None:
    if kind == "kill-host":
        nemesis.start(run.directory, host)
    elif kind == "partition":
        nemesis.heal(run.directory)
    else:
        nemesis.kill(run.directory, host, "CONT")


def fault(run: HaRun, kind: str) -> None:
    """One fault on the host running the most HA containers (see the module docstring)."""
    placement = run.placement()
    first_round = run.faults < len(FAULTS)
    host = pick_target(placement, run.rng, (VM,) if first_round else ())
    if host is None:
        run.problems.append(f"{kind}: no HA container runs anywhere: {placement}")
        return
    moving = sorted(name for name, hosts in placement.items() if host in hosts)
    view = instances_view(run)
    interval = {n: float((view.get(n, {}).get("ha") or {}).get("replication_interval", 5.0))
                for n in moving}
    role = "leader" if host == leader(run) else "follower"
    injected = time.monotonic()
    if run.returns:  # the previous returned host is judged until this fault
        run.returns[-1] = replace(run.returns[-1], until=injected)
    inject(run, kind, host)
    run.faults += 1
    run.note(f"{kind} {host} ({role}), which runs {', '.join(moving)}")
    try:
        for name in moving:
            run.failovers.append(follow(run, name, host, injected, interval[name]))
    finally:
        back = time.monotonic()  # from here on it may start what it has
        undo(run, kind, host)
    run.note(f"{host} back: {UNDONE[kind]}")
    run.returns.append(Return(host, tuple(moving), back, math.inf))
    if until(lambda: member_statuses(run, host).get(host) == "Online", BACK_TIMEOUT) is None:
        run.problems.append(f"{host} not ONLINE within {BACK_TIMEOUT:g} s of its return: "
                            f"{member_statuses(run, host)}")
    kept = until(lambda: not [n for n in moving if has_copy(run.members[host], n)] or None,
                 BACK_TIMEOUT)
    if kept is None:
        run.problems.append(f"{host} still has stale copies {BACK_TIMEOUT:g} s after its "
                            f"return: {[n for n in moving if has_copy(run.members[host], n)]}")
    shipped = time.monotonic()
    if until(lambda: fresh_replicas(run, shipped) == [] or None, REPLICA_TIMEOUT) is None:
        run.problems.append(f"no fresh replica {REPLICA_TIMEOUT:g} s after {host} came back: "
                            f"{fresh_replicas(run, shipped)}")
    run.note(f"{host} ONLINE, stale copies gone, replicas fresh")


def follow(run: HaRun, name: str, old: str, injected: float, interval: float) -> Failover:
    """Wait until ``name`` runs on another member (the API and /proc agree), then read
    the counters: the old copy's last write and the value the new copy started from."""
    def moved() -> str | None:
        inst = instances_view(run, old).get(name, {})
        where = inst.get("location", "")
        if where not in ("", old) and inst.get("status") == "Running" and (
                run.placement().get(name) == (where,)):
            return str(where)
        return None

    new = until(moved, FAILOVER_TIMEOUT)
    if new is None:
        run.problems.append(f"{name} not failed over off {old} within {FAILOVER_TIMEOUT:g} s: "
                            f"API {instances_view(run, old).get(name, {}).get('location')} "
                            f"{instances_view(run, old).get(name, {}).get('status')}, "
                            f"/proc {run.placement().get(name)}")
        return Failover(name, old, read_int(run.members[old], name, "counter"), None,
                        interval, time.monotonic() - injected)
    took = time.monotonic() - injected
    if until(lambda: old not in run.placement().get(name, (old,)), 20.0) is None:
        run.problems.append(f"{name}'s old copy still runs on {old} after its failover")
    last = read_int(run.members[old], name, "counter")
    if name == VM:
        resumed = vm_resume(run, new)
    else:
        first = read_int(run.members[new], name, "counter")
        resumed = None  # the new copy's boot line in /starts is written before it counts
        if until(lambda: read_int(run.members[new], name, "counter") != first, 10.0, 0.05):
            resumed = read_int(run.members[new], name, "starts", last_line=True)
        else:
            run.problems.append(f"{name}'s counter does not advance on {new} after its "
                                "failover")
    stopped = detection(run.seen(), name, old, injected)
    record = Failover(name, old, last, resumed, interval,
                      took if stopped is None else stopped)
    run.note(f"{name}: {old} -> {new} in {took:.1f} s, wrote {last}, resumed from {resumed} "
             f"(lost {record.loss} ticks, bound {record.bound()}; old copy gone after "
             f"{record.detection:.1f} s)")
    return record


def vm_resume(run: HaRun, new: str) -> int | None:
    """The VM's counter as its promoted replica holds it (nothing counts in the new copy
    yet: its guest runs nothing of the disk at boot), then its loop started again there;
    None if it could not be read or does not advance."""
    resumed = vm_int(run, new, "counter")
    if vm_exec(run, new, VM_RESTART) is None:
        return None
    if until(lambda: vm_int(run, new, "counter") not in (None, resumed), 20.0, 0.5) is None:
        run.problems.append(f"{VM}'s counter does not advance on {new} after its failover")
        return None
    started = vm_int(run, new, "starts", last_line=True)
    if started != resumed:
        run.problems.append(f"{VM} on {new}: read {resumed} before its loop started, "
                            f"which started from {started}")
    return resumed


def play(members: list[DaemonProcess], rounds: int = 1, seed: int = 15) -> HaRun:
    """Launch the HA containers and the HA VM, inject each of FAULTS in turn (``rounds``
    times), then stop sampling; every fault undone in the end, also on failure."""
    run = HaRun({m.root.name: m for m in members},
                [f"ha{i + 1}" for i in range(INSTANCES)] + [VM], random.Random(seed))
    sampler = threading.Thread(target=sample_loop, args=(run,), daemon=True,
                               name="ha-chaos-sampler")
    sampler.start()
    try:
        launch(run)
        for kind in FAULTS * rounds:
            fault(run, kind)
        time.sleep(2.0)  # a last look at the returned host
    finally:
        end = time.monotonic()
        if run.returns:
            run.returns[-1] = replace(run.returns[-1], until=end)
        run.stop.set()
        sampler.join(10)
        restore = Nemesis(run.directory, sorted(run.members), lambda: None, run.rng)
        with contextlib.suppress(nemesis.NemesisError):
            run.log += [f"restore: {what}" for what in restore.restore()]
    return run
