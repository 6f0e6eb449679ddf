"""A live VM move is an intent the Raft leader drives (``cluster/controllers/live_moves.py``);
kill -9 of the leader's daemon while the VM's disk and RAM are in flight must end the move
done or cleanly undone, the VM running exactly once (one QEMU for it in the whole cluster,
where the state says it lives), its guest never rebooted and its disk intact:

- the leader is neither the source nor the target: the kill takes only the controller, both
  QEMUs and both members' halves of the migration live on. This is the case the intent
  exists for: the migration the dead leader set going carries on by itself (the source's
  QEMU may even complete it and wait paused) while the new leader decides, from the
  replicated phase alone, to undo it, and it must win that race cleanly;
- the leader is the source, or the target: the kill also takes that member's half (the
  daemon that follows its QEMU), and that daemon stays down until the new leader has
  finished the intent, so the calls that end the half fail; once back, the member must
  end it the way the state says the move ended (``node_agent/migration_leftovers.py``):
  a source stopped at the switch-over runs the guest again and stays movable, a target's
  waiting QEMU goes.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.harness import DaemonProcess
from tests.cluster.conftest import namespace_cluster
from tests.cluster.test_intent_failover import _instances, _name, _roles, _until, _wait_op
from tests.integration.api import Api

pytestmark = pytest.mark.real

COUNTER = ("i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done "
           "</dev/null >/dev/null 2>&1 &")
BLOB_MB = 48  # on the guest's disk: the mirror has something to carry while we kill


@pytest.fixture(scope="module")
def members() -> Iterator[list[DaemonProcess]]:
    with namespace_cluster(3) as started:
        started[0].corral("image", "build", "busybox", "--vm", timeout=300)
        yield started


def _sh(daemon: DaemonProcess, name: str, script: str) -> str:
    out = daemon.corral("exec", name, "--", "sh", "-c", script, timeout=120).stdout
    return out.decode().strip()


def _wait_for_agent(daemon: DaemonProcess, name: str, timeout: float = 180.0) -> None:
    _until(lambda: daemon.corral("exec", name, "--", "true", check=False,
                                 timeout=60).returncode == 0,
           timeout, f"the agent in {name} answers")


def _qemus(members: list[DaemonProcess], name: str) -> list[tuple[str, int]]:
    """(member, pid) of every QEMU process of VM ``name`` under one of the members' roots,
    found in /proc (all members share this machine's PID namespace), whatever the
    members' pid files say."""
    roots = {str(m.root / "vms" / name / "qemu.pid"): _name(i) for i, m in enumerate(members)}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        args = [a.decode(errors="replace") for a in argv]
        if "-pidfile" in args and args.index("-pidfile") + 1 < len(args):
            member = roots.get(args[args.index("-pidfile") + 1])
            if member is not None and os.path.basename(args[0]).startswith("qemu-system"):
                found.append((member, int(entry.name)))
    return sorted(found)


def _migration_in_flight(daemon: DaemonProcess, op_id: str) -> bool:
    """The move's operation shows the source's progress: QEMU is sending (``sending``).
    Fails if the move ended first (the kill would not hit a migration in flight)."""
    status, doc = Api(str(daemon.socket)).call("GET", f"/1.0/operations/{op_id}")
    assert status == 200, doc
    op = doc["metadata"]
    assert op["status"] == "Running", f"the move ended before the kill: {op}"
    return "bytes_transferred" in (op["metadata"] or {})


def _kill_mid_migration(members: list[DaemonProcess], leader: int, source: int, target: int,
                        follower: int, name: str, *, down_until_ended: bool,
                        ) -> tuple[dict[str, object], str]:
    """Move ``name`` live from ``source`` to ``target`` through the leader, kill -9 the
    leader as soon as the migration is in flight, and follow the operation on ``follower``;
    the leader's daemon restarts at once, or (``down_until_ended``) only once the
    operation has ended. Answers the operation and where the VM is expected (the target
    if the move was done, the source if it was undone)."""
    status, doc = Api(str(members[leader].socket)).call(
        "POST", f"/1.0/instances/{name}?target={_name(target)}",
        {"name": name, "migration": True})
    assert status == 202, doc
    op_id = doc["metadata"]["id"]
    _until(lambda: _migration_in_flight(members[follower], op_id), 300,
           "the live migration is in flight")
    members[leader].stop(signal.SIGKILL)
    killed = time.monotonic()
    try:
        if not down_until_ended:
            members[leader].start(timeout=180)
        op = _wait_op(members[follower], op_id, timeout=600)
        ended = time.monotonic() - killed
    finally:
        if members[leader].process is None:
            members[leader].start(timeout=180)
    print(f"live move after the leader's death: {op['status']} {op['err']!r} "
          f"{ended:.1f} s after the kill; the leader's daemon was back after "
          f"{time.monotonic() - killed:.1f} s at the latest")
    assert op["status"] in ("Success", "Failure"), op
    if op["status"] == "Failure":
        assert "interrupted" in op["err"], op
    return op, _name(target) if op["status"] == "Success" else _name(source)


def _runs_exactly_once(members: list[DaemonProcess], name: str, where: str,
                       boot_id: str, checksum: str) -> None:
    """Every member's API says ``name`` runs on ``where``; one QEMU of it exists, there;
    the guest goes on where it was (same boot, its loop counting, its disk intact)."""
    for member in members:
        found = _instances(member)[name]
        assert (found["location"], found["status"]) == (where, "Running"), found
    seen: list[tuple[str, int]] = []

    def once_there() -> bool:
        seen[:] = _qemus(members, name)
        return [m for m, _ in seen] == [where]

    _until(once_there, 60, f"exactly one QEMU of {name}, on {where} (found {seen})")
    here = members[int(where[1:]) - 1]
    _wait_for_agent(here, name, 120)  # TCG retranslates on a new QEMU: slow at first
    assert _sh(here, name, "cat /proc/sys/kernel/random/boot_id") == boot_id
    before = int(_sh(here, name, "cat /tmp/counter"))
    _until(lambda: int(_sh(here, name, "cat /tmp/counter")) > before, 60,
           "the guest's loop goes on")
    assert _sh(here, name, "cat /mnt/root/keep") == "precious"
    assert _sh(here, name, "md5sum /mnt/root/blob").split()[0] == checksum
    others = [m for i, m in enumerate(members) if _name(i) != where]
    for other in others:  # nothing of it left on the other members
        assert not (other.root / "vms" / name).exists(), other.root
        assert not (other.root / "storage-pools" / "default" / "virtual-machines"
                    / name).exists(), other.root


def _launch(members: list[DaemonProcess], via: int, source: int, name: str,
            ) -> tuple[str, str]:
    """A running VM on ``source`` with a marker, a counting loop and a blob on its disk;
    its boot id and the blob's checksum."""
    members[via].corral("launch", "busybox-vm", name, "--vm", "--target", _name(source),
                        "-c", "limits.memory=256MiB", timeout=300)
    here = members[source]
    _wait_for_agent(here, name)
    _sh(here, name, f"echo precious > /mnt/root/keep && dd if=/dev/urandom "
                    f"of=/mnt/root/blob bs=1M count={BLOB_MB} 2>/dev/null && sync")
    _sh(here, name, COUNTER)
    checksum = _sh(here, name, "md5sum /mnt/root/blob").split()[0]
    return _sh(here, name, "cat /proc/sys/kernel/random/boot_id"), checksum


def _moves_again(members: list[DaemonProcess], via: int, name: str, where: str,
                 to: str, boot_id: str) -> None:
    """Nothing of the interrupted move holds the VM (lock, QEMU jobs, block nodes): it
    migrates live again, without rebooting."""
    members[via].corral("move", name, "--target", to, timeout=600)
    found = _instances(members[via])[name]
    assert (found["location"], found["status"]) == (to, "Running"), found
    assert [m for m, _ in _qemus(members, name)] == [to]
    here = members[int(to[1:]) - 1]
    _wait_for_agent(here, name, 120)
    assert _sh(here, name, "cat /proc/sys/kernel/random/boot_id") == boot_id


def test_a_live_vm_move_when_the_leader_dies_ends_done_or_undone(
        members: list[DaemonProcess]) -> None:
    """The leader is neither source nor target (see the module's docstring): the target's
    member follows the operation, the source keeps its QEMU whatever happens."""
    leader, source, target = _roles(members)
    name = "lvk1"
    try:
        boot_id, checksum = _launch(members, leader, source, name)
        _, where = _kill_mid_migration(members, leader, source, target, target, name,
                                       down_until_ended=False)
        _runs_exactly_once(members, name, where, boot_id, checksum)
        other = _name(source) if where == _name(target) else _name(target)
        _moves_again(members, target, name, where, other, boot_id)
    finally:
        members[target].corral("delete", "--force", name, check=False, timeout=300)
    assert _qemus(members, name) == []


def test_a_live_vm_move_when_the_leader_is_its_source_and_dies(
        members: list[DaemonProcess]) -> None:
    """The leader is the source: its daemon dies with the migration in flight and stays
    down until the new leader (one of the other two) has finished the intent, so nothing
    on the source hears of the undo: its QEMU is left as the migration left it."""
    leader, _, target = _roles(members)
    follower = 3 - leader - target  # neither: it sees the whole story
    name = "lvk2"
    try:
        boot_id, checksum = _launch(members, leader, leader, name)
        _, where = _kill_mid_migration(members, leader, leader, target, follower, name,
                                       down_until_ended=True)
        _runs_exactly_once(members, name, where, boot_id, checksum)
        other = _name(leader) if where == _name(target) else _name(target)
        _moves_again(members, follower, name, where, other, boot_id)
    finally:
        members[follower].corral("delete", "--force", name, check=False, timeout=300)
    assert _qemus(members, name) == []



def test_a_live_vm_move_when_the_leader_is_its_target_and_dies(
        members: list[DaemonProcess]) -> None:
    """The leader is the target: its daemon dies with the migration in flight (its
    paused QEMU receiving the VM) and stays down until the new leader has undone the
    move, so the incoming QEMU is left waiting on a member that heard nothing."""
    leader, source, _ = _roles(members)
    follower = 3 - leader - source
    name = "lvk3"
    try:
        boot_id, checksum = _launch(members, leader, source, name)
        _, where = _kill_mid_migration(members, leader, source, leader, follower, name,
                                       down_until_ended=True)
        _runs_exactly_once(members, name, where, boot_id, checksum)
        other = _name(source) if where == _name(leader) else _name(leader)
        _moves_again(members, follower, name, where, other, boot_id)
    finally:
        members[follower].corral("delete", "--force", name, check=False, timeout=300)
    assert _qemus(members, name) == []
