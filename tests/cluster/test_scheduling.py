"""The scheduler on a real 3-member cluster: spread, manual members, cold and stateful
moves, evacuation."""

from __future__ import annotations

import json
import time

import pytest

from cluster.api.metrics.render import parse
from devtools.harness import DaemonProcess
from tests.cluster.test_nemesis import _leader
from tests.integration.api import Api
from tests.integration.guest_counter import count, counter_pid, start_counter

pytestmark = pytest.mark.real


def _where(daemon: DaemonProcess) -> dict[str, str]:
    listed = Api(str(daemon.socket)).get("/1.0/instances?recursion=1")
    return {i["name"]: i["location"] for i in listed}


def _status(daemon: DaemonProcess, name: str) -> str:
    return str(Api(str(daemon.socket)).get(f"/1.0/instances/{name}")["status"])


def test_launches_spread_and_manual_members_only_take_targeted(
        members: list[DaemonProcess]) -> None:
    m1 = members[0]
    for name in ("s1", "s2", "s3"):
        m1.corral("launch", "busybox", name)
    where = _where(m1)
    assert sorted(where[n] for n in ("s1", "s2", "s3")) == ["m1", "m2", "m3"]
    dry = m1.corral("launch", "busybox", "nope", "--dry-run").stdout.decode()
    assert "placed on m" in dry and "score" in dry
    assert "nope" not in _where(m1)

    m1.corral("cluster", "set", "m3", "scheduler.instance", "manual")
    for name in ("s4", "s5", "s6"):
        m1.corral("launch", "busybox", name)
    assert all(_where(m1)[n] != "m3" for n in ("s4", "s5", "s6"))
    m1.corral("launch", "busybox", "s7", "--target", "m3")
    assert _where(m1)["s7"] == "m3"
    explain = Api(str(m1.socket)).get("/1.0/instances/s7?placement=explain")
    dropped = {m: r for s in explain["stages"] for m, r in s["dropped"].items()}
    assert "scheduler.instance=manual" in dropped["m3"]
    m1.corral("cluster", "unset", "m3", "scheduler.instance")
    for name in ("s4", "s5", "s6", "s7"):
        m1.corral("delete", "--force", name)


def test_a_full_cluster_names_the_binding_constraint(members: list[DaemonProcess]) -> None:
    result = members[1].corral("launch", "busybox", "huge", "-c", "limits.memory=100TiB",
                               check=False)
    assert result.returncode == 1
    assert b"no member has 100 TiB free memory; largest free:" in result.stderr, result.stderr
    assert "huge" not in _where(members[1])


def _metrics(daemon: DaemonProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The member's own ``/1.0/metrics`` samples, by name and sorted labels."""
    status, _, body = Api(str(daemon.socket)).raw("GET", "/1.0/metrics")
    assert status == 200, body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parse(body.decode()) for s in family.samples}


def test_move_a_running_container_keeps_its_files(members: list[DaemonProcess]) -> None:
    m1 = members[0]
    m1.corral("launch", "busybox", "mover", "--target", "m1")
    m1.corral("exec", "mover", "--", "sh", "-c", "echo precious > /root/keep")
    # A directory of the image moved in the container: its files keep the ctimes of the
    # spare the volume may come from (a copy stays at the old path for DHCP).
    script = "/usr/share/udhcpc/default.script"
    original = m1.corral("exec", "mover", "--", "cat", script).stdout
    m1.corral("exec", "mover", "--", "sh", "-c",
              "mv /usr/share/udhcpc /usr/share/udhcpc.moved && mkdir /usr/share/udhcpc"
              " && cp -p /usr/share/udhcpc.moved/default.script /usr/share/udhcpc/")
    m1.corral("snapshot", "mover", "before")
    m1.corral("move", "mover", "--target", "m2")
    assert _where(m1)["mover"] == "m2" and _status(members[1], "mover") == "Running"
    out = members[2].corral("exec", "mover", "--", "cat", "/root/keep").stdout
    assert out.decode().strip() == "precious"
    moved = members[2].corral("exec", "mover", "--", "cat",
                              "/usr/share/udhcpc.moved/default.script").stdout
    assert moved == original and original
    assert not (m1.root / "storage-pools" / "default" / "containers" / "mover").exists()
    assert (members[1].root / "storage-pools" / "default" / "containers-snapshots" /
            "mover" / "before").is_dir()
    # Bad moves change nothing.
    bad = m1.corral("move", "mover", "--target", "m9", check=False)
    assert bad.returncode == 1 and b"not found" in bad.stderr
    same = m1.corral("move", "mover", "--target", "m2", check=False)
    assert same.returncode == 1 and b"already on member m2" in same.stderr
    assert _where(m1)["mover"] == "m2" and _status(members[1], "mover") == "Running"
    m1.corral("delete", "--force", "mover")


def test_move_a_stateful_container_keeps_its_processes(members: list[DaemonProcess]) -> None:
    m1 = members[0]
    m1.corral("launch", "busybox", "live", "--target", "m1", "-c", "migration.stateful=true")
    start_counter(m1, "live")
    time.sleep(0.5)
    pid, before = counter_pid(m1, "live"), count(m1, "live")
    assert pid.isdigit()
    address = m1.corral("exec", "live", "--", "ip", "-4", "-o", "addr", "show", "eth0"
                        ).stdout.split()[3]
    m1.corral("move", "live", "--target", "m2")
    assert _where(m1)["live"] == "m2" and _status(members[1], "live") == "Running"
    assert count(m1, "live") >= before
    time.sleep(0.4)
    assert count(m1, "live") > before  # the same loop counts on, not a new boot
    assert counter_pid(m1, "live") == pid
    assert m1.corral("exec", "live", "--", "ip", "-4", "-o", "addr", "show", "eth0"
                     ).stdout.split()[3] == address
    pool = members[1].root / "storage-pools" / "default" / "containers" / "live"
    assert not (pool / "state").exists()  # the checkpoint is gone once restored
    assert not (m1.root / "storage-pools" / "default" / "containers" / "live").exists()
    m1.corral("delete", "--force", "live")


def test_evacuate_and_restore_a_member(members: list[DaemonProcess]) -> None:
    m1 = members[0]
    for name in ("e1", "e2", "e3"):
        m1.corral("launch", "busybox", name, "--target", "m3",
                  *(["-c", "migration.stateful=true"] if name == "e2" else []))
    m1.corral("exec", "e1", "--", "sh", "-c", "echo here > /root/mark")
    start_counter(m1, "e2")
    time.sleep(0.3)
    pid = counter_pid(m1, "e2")
    assert pid.isdigit()
    started = time.monotonic()
    m1.corral("cluster", "evacuate", "m3", "--force")
    evacuated_in = time.monotonic() - started
    where = _where(m1)
    assert all(where[n] in ("m1", "m2") for n in ("e1", "e2", "e3")), where
    assert all(_status(m1, n) == "Running" for n in ("e1", "e2", "e3"))
    listed = json.loads(m1.corral("cluster", "list", "--format", "json").stdout)
    assert {m["server_name"]: m["status"] for m in listed}["m3"] == "Evacuated"
    m1.corral("launch", "busybox", "e4")
    assert _where(m1)["e4"] != "m3"  # nothing new lands on an evacuated member
    m1.corral("cluster", "restore", "m3", "--force")
    where = _where(m1)
    assert all(where[n] == "m3" for n in ("e1", "e2", "e3")), where
    assert all(_status(m1, n) == "Running" for n in ("e1", "e2", "e3"))
    assert m1.corral("exec", "e1", "--", "cat", "/root/mark").stdout.decode().strip() == "here"
    assert counter_pid(m1, "e2") == pid  # moved twice with its processes
    print(f"evacuation of 3 containers: {evacuated_in:.2f} s")
    # The leader drove it all and counted it: an evacuation, a restore, six cold moves of
    # running containers (each with its downtime), three targets the scheduler chose.
    leader = _leader(m1)
    found = _metrics(next(m for m in members if m.root.name == leader))

    def moves(kind: str) -> float:
        return found[("corral_moves_total", (("kind", kind), ("result", "succeeded")))]

    assert moves("evacuate") >= 1 and moves("restore") >= 1 and moves("move") >= 6
    assert found[("corral_move_downtime_seconds_count", (("kind", "move"),))] >= 6
    assert found[("corral_move_duration_seconds_count", (("kind", "evacuate"),))] >= 1
    assert found[("corral_scheduler_placements_total",
                  (("purpose", "evacuation"), ("result", "placed")))] >= 3


def test_target_a_cluster_group(members: list[DaemonProcess]) -> None:
    m1 = members[0]
    m1.corral("cluster", "group", "assign", "m2", "fast")
    m1.corral("launch", "busybox", "g1", "--target", "@fast")
    assert _where(m1)["g1"] == "m2"
    bad = m1.corral("launch", "busybox", "g2", "--target", "@nosuch", check=False)
    assert bad.returncode == 1 and "g2" not in _where(m1)
    m1.corral("cluster", "group", "assign", "m2", "")
    m1.corral("delete", "--force", "g1")


def test_a_failed_move_leaves_the_instance_running_where_it_was(
        members: list[DaemonProcess]) -> None:
    m1 = members[0]
    m1.corral("launch", "busybox", "stuck", "--target", "m1")
    stale = members[1].root / "storage-pools" / "default" / "containers" / "stuck"
    (stale / "rootfs").mkdir(parents=True)  # the target already holds a volume of that name
    try:
        failed = m1.corral("move", "stuck", "--target", "m2", check=False)
        assert failed.returncode == 1 and b"already exists" in failed.stderr, failed.stderr
        assert _where(m1)["stuck"] == "m1" and _status(m1, "stuck") == "Running"
        assert (stale / "rootfs").is_dir()  # not the move's to delete: it was there before
        assert m1.corral("exec", "stuck", "--", "true").returncode == 0
    finally:
        import shutil

        shutil.rmtree(stale, ignore_errors=True)
    m1.corral("move", "stuck", "--target", "m2")  # and once the way is clear, it moves
    assert _where(m1)["stuck"] == "m2" and _status(members[1], "stuck") == "Running"
    m1.corral("delete", "--force", "stuck")
