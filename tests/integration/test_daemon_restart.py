"""Restarting the daemon, also after kill -9, loses nothing and keeps containers running."""

from __future__ import annotations

import signal
import time

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
