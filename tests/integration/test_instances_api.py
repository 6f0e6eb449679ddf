"""Real containers through the API: lifecycle, limits, snapshots and bad input."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devtools.harness import DaemonProcess
from tests.integration.api import Api

pytestmark = pytest.mark.real


@pytest.fixture
def running(api: Api) -> Iterator[str]:
    name = f"t{secrets.token_hex(3)}"
    api.ok("POST", "/1.0/instances", {"name": name, "source": {"type": "image",
                                                               "alias": "busybox"},
                                      "config": {"limits.memory": "128MiB",
                                                 "limits.cpu": "1",
                                                 "limits.processes": "200"},
                                      "start": True})
    yield name
    api.settle("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})
    api.settle("DELETE", f"/1.0/instances/{name}")


def names(api: Api) -> list[str]:
    return [u.rsplit("/", 1)[1] for u in api.get("/1.0/instances")]


def exec_out(daemon: DaemonProcess, name: str, *cmd: str) -> tuple[int, str]:
    result = daemon.corral("exec", name, "--", *cmd, check=False)
    return result.returncode, result.stdout.decode()


def test_launch_exec_stop_start_delete(api: Api, daemon: DaemonProcess) -> None:
    name = f"life{secrets.token_hex(2)}"
    api.ok("POST", "/1.0/instances", {"name": name, "source": {"alias": "busybox",
                                                               "type": "image"}})
    inst = api.get(f"/1.0/instances/{name}")
    assert inst["status"] == "Stopped" and inst["expanded_devices"]["root"]["path"] == "/"
    api.ok("PUT", f"/1.0/instances/{name}/state", {"action": "start"})
    state = api.get(f"/1.0/instances/{name}/state")
    assert state["status"] == "Running" and state["pid"] > 0
    code, out = exec_out(daemon, name, "cat", "/etc/hostname")
    assert code == 0 and out.strip() == name
    assert exec_out(daemon, name, "sh", "-c", "exit 3")[0] == 3
    code, out = exec_out(daemon, name, "id", "-u")
    assert out.strip() == "0"
    api.ok("PUT", f"/1.0/instances/{name}/state", {"action": "freeze"})
    assert api.get(f"/1.0/instances/{name}")["status"] == "Frozen"
    api.ok("PUT", f"/1.0/instances/{name}/state", {"action": "unfreeze"})
    api.ok("PUT", f"/1.0/instances/{name}/state", {"action": "restart", "force": True})
    assert api.get(f"/1.0/instances/{name}")["status"] == "Running"
    api.ok("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})
    assert api.get(f"/1.0/instances/{name}")["status"] == "Stopped"
    api.ok("DELETE", f"/1.0/instances/{name}")
    assert name not in names(api)
    assert not (daemon.root / "storage-pools" / "default" / "containers" / name).exists()
    assert not (daemon.root / "containers" / name).exists()


def test_unprivileged_by_default_and_limits_visible_inside(api: Api, daemon: DaemonProcess,
                                                          running: str) -> None:
    rootfs = daemon.root / "storage-pools" / "default" / "containers" / running / "rootfs"
    assert rootfs.stat().st_uid >= 100000  # the container's root is a mapped host id
    assert exec_out(daemon, running, "nproc")[1].strip() == "1"
    code, out = exec_out(daemon, running, "sh", "-c",
                         "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                         "/sys/fs/cgroup/memory.max 2>/dev/null; true")
    assert str(128 * 2**20) in out, out
    code, out = exec_out(daemon, running, "sh", "-c",
                         "cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max "
                         "2>/dev/null; true")
    assert "200" in out, out


def test_live_limit_update_reaches_the_cgroup(api: Api, daemon: DaemonProcess,
                                             running: str) -> None:
    api.ok("PATCH", f"/1.0/instances/{running}", {"config": {"limits.memory": "96MiB"}})
    code, out = exec_out(daemon, running, "sh", "-c",
                         "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                         "/sys/fs/cgroup/memory.max 2>/dev/null; true")
    assert str(96 * 2**20) in out, out


def test_concurrent_patches_both_stay_and_a_stale_if_match_is_a_412(api: Api,
                                                                   running: str) -> None:
    """Issue 13, finding 4, on the real daemon: PATCHes of different keys sent at once
    both survive; a PUT with the ETag read before them is refused and changes nothing."""
    path = f"/1.0/instances/{running}"
    status, headers, _ = api.raw("GET", path)
    assert status == 200
    stale = headers["ETag"]
    keys = [f"user.k{n}" for n in range(6)]
    with ThreadPoolExecutor(len(keys)) as pool:
        list(pool.map(lambda key: api.ok("PATCH", path, {"config": {key: "1"}}), keys))
    config = api.get(path)["config"]
    assert {key: config.get(key) for key in keys} == dict.fromkeys(keys, "1")
    status, doc = api.call("PUT", path, {"config": {}, "devices": {}},
                           {"If-Match": f'"{stale}"'})
    assert (status, doc["error_code"]) == (412, 412), doc
    assert all(key in api.get(path)["config"] for key in keys)


def test_snapshot_restore_and_delete(api: Api, daemon: DaemonProcess, running: str) -> None:
    assert exec_out(daemon, running, "sh", "-c", "echo one > /root/f")[0] == 0
    api.ok("POST", f"/1.0/instances/{running}/snapshots", {"name": "s1"})
    assert exec_out(daemon, running, "sh", "-c", "echo two > /root/f")[0] == 0
    snaps = api.get(f"/1.0/instances/{running}/snapshots")
    assert snaps == [f"/1.0/instances/{running}/snapshots/s1"]
    api.ok("PUT", f"/1.0/instances/{running}", {"restore": "s1"})
    assert exec_out(daemon, running, "cat", "/root/f")[1].strip() == "one"
    api.ok("DELETE", f"/1.0/instances/{running}/snapshots/s1")
    assert api.get(f"/1.0/instances/{running}/snapshots") == []


def test_list_recursion_and_filter(api: Api, running: str) -> None:
    full = api.get("/1.0/instances?recursion=2")
    mine = [i for i in full if i["name"] == running][0]
    assert mine["state"]["status"] == "Running" and "network" in mine["state"]
    filtered = api.get(f"/1.0/instances?recursion=1&filter=name%20eq%20{running}")
    assert [i["name"] for i in filtered] == [running]


# --- bad input: a clear LXD error and no change -----------------------------------------

def _error(api: Api, method: str, path: str, body: object = None) -> tuple[int, str]:
    status, doc = api.call(method, path, body)
    assert doc["type"] == "error" and doc["error_code"] == status, doc
    return status, doc["error"]


@pytest.mark.parametrize("name", ["1abc", "-abc", "abc-", "a_b", "a" * 64, "a.b", ""])
def test_invalid_instance_names_are_refused(api: Api, daemon: DaemonProcess, name: str) -> None:
    before = names(api)
    status, message = _error(api, "POST", "/1.0/instances",
                             {"name": name or None, "source": {"alias": "busybox"}}
                             if name else {"name": "", "source": {"alias": "nope"}})
    assert status in (400, 404) and message
    assert names(api) == before


@pytest.mark.parametrize("config,needle", [
    ({"bogus.key": "1"}, "Unknown configuration key"),
    ({"limits.memory": "lots"}, "limits.memory"),
    ({"limits.cpu": "-1"}, "limits.cpu"),
    ({"security.privileged": "maybe"}, "security.privileged"),
    ({"limits.processes": "0"}, "limits.processes"),
])
def test_bad_config_is_refused(api: Api, config: dict[str, str], needle: str) -> None:
    before = names(api)
    status, message = _error(api, "POST", "/1.0/instances",
                             {"name": "badcfg", "source": {"alias": "busybox"},
                              "config": config})
    assert status == 400 and needle in message
    assert names(api) == before


def test_bad_config_update_changes_nothing(api: Api, running: str) -> None:
    before = api.get(f"/1.0/instances/{running}")["config"]
    status, message = _error(api, "PATCH", f"/1.0/instances/{running}",
                             {"config": {"limits.memory": "12 parsecs"}})
    assert status == 400
    assert api.get(f"/1.0/instances/{running}")["config"] == before


def test_unknown_image_duplicate_and_running_delete(api: Api, running: str,
                                                    daemon: DaemonProcess) -> None:
    status, message = _error(api, "POST", "/1.0/instances",
                             {"name": "noimg", "source": {"alias": "no-such-image"}})
    assert status == 404 and "not found" in message.lower()
    assert not (daemon.root / "storage-pools" / "default" / "containers" / "noimg").exists()
    status, message = _error(api, "POST", "/1.0/instances",
                             {"name": running, "source": {"alias": "busybox"}})
    assert status == 409 and "already exists" in message
    status, message = _error(api, "DELETE", f"/1.0/instances/{running}")
    assert status == 400 and "running" in message.lower()
    assert api.get(f"/1.0/instances/{running}")["status"] == "Running"


def test_non_json_and_oversized_bodies(api: Api) -> None:
    status, _, raw = api.raw("POST", "/1.0/instances", b"{not json",
                             {"Content-Type": "application/json"})
    assert status == 400 and b"Invalid JSON" in raw
    big = b'{"name": "' + b"x" * (5 * 2**20) + b'"}'
    status, _, raw = api.raw("POST", "/1.0/instances", big,
                             {"Content-Type": "application/json"})
    assert status == 413 and b'"error_code":413' in raw


def test_exec_on_stopped_instance_is_refused(api: Api) -> None:
    api.ok("POST", "/1.0/instances", {"name": "stoppedx", "source": {"alias": "busybox"}})
    try:
        status, message = _error(api, "POST", "/1.0/instances/stoppedx/exec",
                                 {"command": ["true"], "wait-for-websocket": False})
        assert status == 400 and "not running" in message.lower()
        assert api.get("/1.0/instances/stoppedx")["status"] == "Stopped"
    finally:
        api.ok("DELETE", "/1.0/instances/stoppedx")


def test_unknown_routes_and_instances_get_lxd_errors(api: Api) -> None:
    assert _error(api, "GET", "/1.0/instances/nope")[0] == 404
    assert _error(api, "GET", "/1.0/nothing-here")[0] == 404


def test_no_leftovers_after_failed_create(api: Api, daemon: DaemonProcess) -> None:
    pool = Path(daemon.root / "storage-pools" / "default" / "containers")
    before = sorted(p.name for p in pool.iterdir()) if pool.exists() else []
    _error(api, "POST", "/1.0/instances", {"name": "x", "source": {"alias": "busybox"},
                                           "profiles": ["missing"]})
    after = sorted(p.name for p in pool.iterdir()) if pool.exists() else []
    assert before == after


def _gone_within(api: Api, name: str, seconds: float) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if name not in names(api):
            return True
        time.sleep(0.2)
    return False


def test_ephemeral_instance_is_deleted_when_stopped(api: Api) -> None:
    api.ok("POST", "/1.0/instances", {"name": "eph", "ephemeral": True, "start": True,
                                      "source": {"alias": "busybox"}})
    assert api.get("/1.0/instances/eph")["ephemeral"] is True
    api.ok("PUT", "/1.0/instances/eph/state", {"action": "stop", "force": True})
    assert _gone_within(api, "eph", 10)


def test_poweroff_inside_is_noticed_and_ephemeral_ones_go(api: Api,
                                                         daemon: DaemonProcess) -> None:
    api.ok("POST", "/1.0/instances", {"name": "selfstop", "start": True,
                                      "source": {"alias": "busybox"}})
    api.ok("POST", "/1.0/instances", {"name": "selfeph", "start": True, "ephemeral": True,
                                      "source": {"alias": "busybox"}})
    try:
        for name in ("selfstop", "selfeph"):
            daemon.corral("exec", name, "--", "poweroff", check=False)
        assert _gone_within(api, "selfeph", 30)
        assert api.get("/1.0/instances/selfstop")["status"] == "Stopped"
    finally:
        api.settle("PUT", "/1.0/instances/selfstop/state", {"action": "stop", "force": True})
        api.settle("DELETE", "/1.0/instances/selfstop")


def test_privileged_opt_out_and_rename(api: Api, daemon: DaemonProcess) -> None:
    api.ok("POST", "/1.0/instances", {"name": "priv", "source": {"alias": "busybox"},
                                      "config": {"security.privileged": "true"}})
    pool = daemon.root / "storage-pools" / "default" / "containers"
    assert (pool / "priv" / "rootfs").stat().st_uid == 0  # no id shift when privileged
    api.ok("POST", "/1.0/instances/priv", {"name": "priv2"})
    assert "priv2" in names(api) and "priv" not in names(api)
    assert (pool / "priv2" / "rootfs").is_dir() and not (pool / "priv").exists()
    api.ok("PUT", "/1.0/instances/priv2/state", {"action": "start"})
    assert exec_out(daemon, "priv2", "cat", "/etc/hostname")[1].strip() == "priv"
    status, doc = api.call("POST", "/1.0/instances/priv2", {"name": "priv3"})
    assert status == 400 and "running" in doc["error"].lower()
    api.ok("PUT", "/1.0/instances/priv2/state", {"action": "stop", "force": True})
    api.ok("DELETE", "/1.0/instances/priv2")


def test_profiles_apply_to_instances_and_guard_their_use(api: Api, daemon: DaemonProcess) -> None:
    api.ok("POST", "/1.0/profiles", {"name": "small", "config": {"limits.memory": "80MiB"}})
    api.ok("POST", "/1.0/instances", {"name": "prof", "start": True,
                                      "source": {"alias": "busybox"},
                                      "profiles": ["default", "small"]})
    try:
        inst = api.get("/1.0/instances/prof")
        assert inst["expanded_config"]["limits.memory"] == "80MiB"
        assert "/1.0/instances/prof" in api.get("/1.0/profiles/small")["used_by"]
        code, out = exec_out(daemon, "prof", "cat",
                             "/sys/fs/cgroup/memory/memory.limit_in_bytes")
        assert out.strip() == str(80 * 2**20)
        status, doc = api.call("DELETE", "/1.0/profiles/small")
        assert status == 400 and "in use" in doc["error"]
        status, doc = api.call("PUT", "/1.0/profiles/small",
                               {"config": {"limits.memory": "bogus"}})
        assert status == 400
        assert api.get("/1.0/profiles/small")["config"] == {"limits.memory": "80MiB"}
    finally:
        api.settle("PUT", "/1.0/instances/prof/state", {"action": "stop", "force": True})
        api.settle("DELETE", "/1.0/instances/prof")
    api.ok("DELETE", "/1.0/profiles/small")
    assert "/1.0/profiles/small" not in api.get("/1.0/profiles")
