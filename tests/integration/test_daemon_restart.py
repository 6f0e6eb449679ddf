"""Restarting the daemon, also after kill -9, loses nothing and keeps containers running."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from devtools.harness import DaemonProcess
from tests.integration.api import Api

pytestmark = pytest.mark.real


def _pid(api: Api, name: str) -> int:
    return int(api.get(f"/1.0/instances/{name}/state")["pid"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_containers_survive_daemon_restart(fresh_daemon: DaemonProcess, sig: int) -> None:
    api = Api(str(fresh_daemon.socket))
    api.ok("POST", "/1.0/instances", {"name": "keep", "source": {"alias": "busybox"},
                                      "start": True})
    api.ok("POST", "/1.0/instances", {"name": "idle", "source": {"alias": "busybox"}})
    api.ok("POST", "/1.0/profiles", {"name": "extra", "config": {"user.k": "v"}})
    pid = _pid(api, "keep")
    fresh_daemon.stop(sig)
    fresh_daemon.start()
    assert _pid(api, "keep") == pid  # the very same init process: re-attached, not restarted
    assert api.get("/1.0/instances/keep")["status"] == "Running"
    assert api.get("/1.0/instances/idle")["status"] == "Stopped"
    assert api.get("/1.0/profiles/extra")["config"] == {"user.k": "v"}
    result = fresh_daemon.corral("exec", "keep", "--", "cat", "/etc/hostname")
    assert result.stdout.decode().strip() == "keep"
    api.ok("PUT", "/1.0/instances/keep/state", {"action": "stop", "force": True})
    api.ok("DELETE", "/1.0/instances/keep")
    assert [u.rsplit("/", 1)[1] for u in api.get("/1.0/instances")] == ["idle"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_running_vm_survives_daemon_restart(fresh_daemon: DaemonProcess, sig: int) -> None:
    """The daemon re-attaches to the VM's QEMU (pid file, QMP socket) and its agent."""
    api = Api(str(fresh_daemon.socket))
    fresh_daemon.corral("image", "build", "busybox", "--vm", timeout=300)
    fresh_daemon.corral("launch", "busybox-vm", "vkeep", "--vm", "-c", "limits.memory=256MiB",
                        timeout=300)
    deadline = time.monotonic() + 120
    while fresh_daemon.corral("exec", "vkeep", "--", "true", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the VM's agent never answered"
        time.sleep(1.0)
    boot_id = fresh_daemon.corral("exec", "vkeep", "--", "cat",
                                  "/proc/sys/kernel/random/boot_id").stdout
    pid = _pid(api, "vkeep")
    fresh_daemon.stop(sig)
    fresh_daemon.start()
    assert _pid(api, "vkeep") == pid  # the same QEMU, re-attached
    assert api.get("/1.0/instances/vkeep")["status"] == "Running"
    assert fresh_daemon.corral("exec", "vkeep", "--", "cat",
                               "/proc/sys/kernel/random/boot_id").stdout == boot_id
    api.ok("PUT", "/1.0/instances/vkeep/state", {"action": "stop", "force": True})
    api.ok("DELETE", "/1.0/instances/vkeep")


def _until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_restart_mid_batch_converges_on_the_same_end_state(
        fresh_daemon: DaemonProcess) -> None:
    """kill -9 while the agent carries out a batch of changes (starts, stops, a restart,
    a config update, a snapshot): after the restart it converges on what was asked, from
    the desired state alone, and each change is carried out once (the restarted
    container booted once more; the others were not restarted again)."""
    api = Api(str(fresh_daemon.socket))
    for name in ("up1", "up2", "up3"):
        api.ok("POST", "/1.0/instances", {"name": name, "source": {"alias": "busybox"}})
    for name in ("down1", "down2", "again", "conf"):
        api.ok("POST", "/1.0/instances", {"name": name, "source": {"alias": "busybox"},
                                          "start": True})
    pid_again, pid_conf = _pid(api, "again"), _pid(api, "conf")
    batch: list[tuple[str, str, Any]] = [
        *[("PUT", f"/1.0/instances/{n}/state", {"action": "start"}) for n in
          ("up1", "up2", "up3")],
        ("PUT", "/1.0/instances/down1/state", {"action": "stop", "force": True}),
        ("PUT", "/1.0/instances/down2/state", {"action": "stop"}),  # clean: slower
        ("PUT", "/1.0/instances/again/state", {"action": "restart", "force": True}),
        ("PATCH", "/1.0/instances/conf", {"config": {"user.batch": "yes"}}),
        ("POST", "/1.0/instances/conf/snapshots", {"name": "s1"}),
    ]
    for method, path, body in batch:  # committed at once; the agent works through them
        code, doc = api.call(method, path, body)
        assert code < 400 and doc["type"] != "error", doc
    fresh_daemon.stop(signal.SIGKILL)
    fresh_daemon.start()

    def status(name: str) -> str:
        return str(api.get(f"/1.0/instances/{name}")["status"])

    want = {"up1": "Running", "up2": "Running", "up3": "Running", "down1": "Stopped",
            "down2": "Stopped", "again": "Running", "conf": "Running"}
    _until(lambda: {n: status(n) for n in want} == want,
           f"did not converge: {({n: status(n) for n in want})}")
    _until(lambda: [s.rsplit("/", 1)[1] for s in api.get("/1.0/instances/conf/snapshots")]
           == ["s1"], "the snapshot was not taken")
    assert api.get("/1.0/instances/conf")["config"]["user.batch"] == "yes"
    assert _pid(api, "conf") == pid_conf  # an update does not restart it
    assert _pid(api, "again") != pid_again  # the restart happened ...
    pid_after = _pid(api, "again")
    fresh_daemon.stop(signal.SIGTERM)  # ... and a second restart of the daemon repeats none
    fresh_daemon.start()
    _until(lambda: {n: status(n) for n in want} == want, "a second restart changed things")
    assert _pid(api, "again") == pid_after and _pid(api, "conf") == pid_conf
