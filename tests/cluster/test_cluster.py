"""A 3-member cluster in network namespaces: membership, placement, failover, catch-up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from devtools.harness import DaemonProcess
from tests.integration.api import Api
from tests.raft_probe import ask_status, listeners_of, send_file_creating_pickle

pytestmark = pytest.mark.real


def _members(daemon: DaemonProcess) -> list[dict]:
    out = daemon.corral("cluster", "list", "--format", "json").stdout
    return sorted(json.loads(out), key=lambda m: m["server_name"])


def _leader(members: list[DaemonProcess]) -> int:
    for m in _members(members[0]):
        if "database-leader" in m["roles"]:
            return int(m["server_name"][1:]) - 1
    raise AssertionError("no leader")


def _wait(predicate, timeout: float = 30.0,  # type: ignore[no-untyped-def]
          describe=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not reached in time {describe()}")


def _liveness_story(daemons: list[DaemonProcess]) -> str:
    """What each live member shows of the others and its log's last lines on liveness
    and leadership: why a member was not shown OFFLINE in time (seen once in CI)."""
    lines = []
    for daemon in daemons:
        shown = daemon.corral("cluster", "list", "--format", "json", check=False)
        lines.append(f"{daemon.root.name}: {shown.stdout.decode(errors='replace')[:600]}")
        log = daemon.root / "corral.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        lines += [f"  {line}" for line in text.splitlines()
                  if "liveness" in line or "leading" in line or "quorum" in line][-15:]
    return "\n".join(lines)


def test_every_member_sees_the_same_three_voters(members: list[DaemonProcess]) -> None:
    views = [[(m["server_name"], m["status"], tuple(r for r in m["roles"]
                                                     if r != "database-leader"))
              for m in _members(d)] for d in members]
    assert views[0] == views[1] == views[2]
    assert [name for name, _, _ in views[0]] == ["m1", "m2", "m3"]
    assert all(status == "Online" and "database" in roles for _, status, roles in views[0])
    assert sum("database-leader" in m["roles"] for m in _members(members[1])) == 1


def test_raft_listens_on_the_member_address_only_and_wants_the_key(
        members: list[DaemonProcess], tmp_path: Path) -> None:
    for daemon in members:
        assert daemon.process is not None
        raft = str(yaml.safe_load((daemon.root / "cluster.yaml").read_text())["raft_address"])
        listening = listeners_of(daemon.process.pid)
        port = raft.rpartition(":")[2]
        assert raft in listening
        assert [a for a in listening if a.endswith(f":{port}")] == [raft]
        assert not [a for a in listening if a.startswith(("0.0.0.0:", "[::]:"))]
        marker = tmp_path / f"pwned-{daemon.root.name}"
        send_file_creating_pickle(raft, marker)
        assert not marker.exists()
        assert ask_status(raft) == b""
    assert _leader(members) in (0, 1, 2)  # the cluster still has its leader


def test_launch_on_each_member_with_target(members: list[DaemonProcess]) -> None:
    for index in range(1, len(members) + 1):
        members[0].corral("launch", "busybox", f"t{index}", "--target", f"m{index}")
    for index, daemon in enumerate(members, start=1):
        api = Api(str(daemon.socket))
        inst = api.get(f"/1.0/instances/t{index}")
        assert inst["location"] == f"m{index}" and inst["status"] == "Running"
        state = api.get(f"/1.0/instances/t{index}/state")
        assert state["pid"] > 0  # the hosting member runs it
        assert daemon.corral("exec", f"t{index}", "--", "hostname").stdout.decode().strip() \
            == f"t{index}"
    placed = Api(str(members[2].socket)).get("/1.0/instances?recursion=1")
    assert {i["name"]: i["location"] for i in placed if i["name"].startswith("t")} == {
        "t1": "m1", "t2": "m2", "t3": "m3"}


def test_operations_and_events_of_every_member_show_on_any_member(
        members: list[DaemonProcess]) -> None:
    async def watch_m1_while_m3_execs() -> list[dict]:
        events: list[dict] = []
        connector = aiohttp.UnixConnector(path=str(members[0].socket))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.ws_connect("http://corral/1.0/events?type=operation") as ws:
                await asyncio.sleep(1.5)  # m1 connects to the other members' streams
                await asyncio.to_thread(members[2].corral, "exec", "t3", "--", "true")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        async for msg in ws:
                            events.append(json.loads(msg.data))
                            if any(e.get("location") == "m3" for e in events):
                                break
        return events

    events = asyncio.run(watch_m1_while_m3_execs())
    assert any(e["location"] == "m3" and e["type"] == "operation" for e in events), events
    members[1].corral("exec", "t2", "--", "true")
    listed = Api(str(members[0].socket)).get("/1.0/operations?recursion=1")
    locations = {op["location"] for ops in listed.values() for op in ops}
    assert {"m2", "m3"} <= locations
    ids = Api(str(members[0].socket)).get("/1.0/operations")
    assert all(isinstance(url, str) for urls in ids.values() for url in urls)


def test_bad_join_tokens_and_names_are_refused(members: list[DaemonProcess]) -> None:
    first = members[0]
    taken = first.corral("cluster", "add", "m2", check=False)
    assert taken.returncode != 0 and b"already has a member" in taken.stderr
    token = first.corral("cluster", "add", "m9").stdout.decode().strip().splitlines()[-1]
    reused = members[1].corral("init", "--join", token, "--address", "10.1.1.1:8443",
                               check=False)
    assert reused.returncode != 0 and b"already initialised" in reused.stderr
    forged = first.corral("init", "--join", "bm90IGEgdG9rZW4=", "--address", "10.1.1.1:8443",
                          check=False)
    assert forged.returncode != 0
    assert [m["server_name"] for m in _members(first)] == ["m1", "m2", "m3"]


def test_leader_kill9_new_leader_accepts_writes_and_member_catches_up(
        members: list[DaemonProcess]) -> None:
    leader = _leader(members)
    survivors = [d for i, d in enumerate(members) if i != leader]
    members[leader].stop(signal.SIGKILL)
    started = time.monotonic()
    survivors[0].corral("profile", "create", "after-failover")
    failover = time.monotonic() - started
    assert failover < 10, failover
    _wait(lambda: any(m["status"] == "Offline" for m in _members(survivors[1])), 30,
          lambda: _liveness_story(survivors))
    members[leader].start()
    api = Api(str(members[leader].socket))
    _wait(lambda: "/1.0/profiles/after-failover" in api.get("/1.0/profiles"))
    _wait(lambda: all(m["status"] == "Online" for m in _members(members[leader])), 30)
    name = f"t{leader + 1}"
    assert api.get(f"/1.0/instances/{name}/state")["status"] == "Running"


def test_kill9_of_every_member_then_restart_loses_nothing(
        members: list[DaemonProcess]) -> None:
    members[0].corral("profile", "create", "before-blackout")
    before = Api(str(members[0].socket)).get("/1.0/instances?recursion=1")
    for daemon in members:
        daemon.stop(signal.SIGKILL)
    for daemon in members:
        daemon.spawn()
    for daemon in members:
        daemon.wait_ready()
    for daemon in members:
        api = Api(str(daemon.socket))
        _wait(lambda api=api: "/1.0/profiles/before-blackout" in api.get("/1.0/profiles"))
        after = api.get("/1.0/instances?recursion=1")
        assert {(i["name"], i["location"]) for i in after} == {
            (i["name"], i["location"]) for i in before}
    _wait(lambda: all(m["status"] == "Online" for m in _members(members[1])), 30)
    # Containers kept running through the blackout and their hosts report them.
    for index, daemon in enumerate(members, start=1):
        state = Api(str(daemon.socket)).get(f"/1.0/instances/t{index}/state")
        assert state["status"] == "Running"


def _stopped(api: Api, name: str) -> bool:
    """Stop ``name`` (forced); False if the request or its operation failed."""
    if api.get(f"/1.0/instances/{name}")["status"] == "Stopped":
        return True
    status, doc = api.call("PUT", f"/1.0/instances/{name}/state",
                           {"action": "stop", "force": True})
    if status >= 400:
        return False
    return doc.get("type") != "async" or api.wait(doc["operation"])["status"] == "Success"


def test_remove_member_and_last_voter_rule(members: list[DaemonProcess]) -> None:
    first = members[0]
    busy = first.corral("cluster", "remove", "m3", check=False)
    assert busy.returncode != 0 and b"still hosts instances" in busy.stderr
    api = Api(str(first.socket))
    # Right after the blackout above a write may meet an election (503): retry as a client,
    # until the instance shows Stopped (what the delete checks; the stop's operation may
    # end a moment before m3's report of it).
    _wait(lambda: _stopped(api, "t3")
          and api.get("/1.0/instances/t3")["status"] == "Stopped", 30)
    api.ok("DELETE", "/1.0/instances/t3")
    first.corral("cluster", "remove", "m3")
    assert [m["server_name"] for m in _members(first)] == ["m1", "m2"]
    assert [m["server_name"] for m in _members(members[1])] == ["m1", "m2"]
    first.corral("profile", "create", "two-members-left")  # the remaining pair still commits
