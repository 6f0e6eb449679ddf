"""VM snapshots through the API: real QEMU under TCG, qcow2 internal snapshots."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from devtools.harness import DaemonProcess
from node_agent.drivers.qemu.snapshots import guest_sync
from tests.integration.api import Api

pytestmark = pytest.mark.real


def _exec(daemon: DaemonProcess, name: str, script: str) -> str:
    deadline = time.monotonic() + 60
    while True:  # the agent answers once the guest's init has started it
        result = daemon.corral("exec", name, "--", "sh", "-c", script, check=False,
                               timeout=90)
        if result.returncode == 0 or time.monotonic() > deadline:
            assert result.returncode == 0, result.stderr
            return result.stdout.decode()
        time.sleep(1)


def _internal_tags(disk: Path) -> list[str]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)],
                         capture_output=True, text=True, check=True).stdout
    return [s["name"] for s in json.loads(out).get("snapshots", [])]


def _error(api: Api, method: str, path: str, body: object = None) -> tuple[int, str]:
    """The error of a call, whether refused at once or by its operation."""
    status, doc = api.call(method, path, body)
    if doc["type"] == "async":
        op = api.wait(doc["operation"])
        return op["status_code"], op["err"]
    return status, doc["error"]


@pytest.mark.timeout(400)
def test_vm_snapshots_running_and_stopped(fresh_daemon: DaemonProcess) -> None:
    daemon, api = fresh_daemon, Api(str(fresh_daemon.socket))
    vm_dir = daemon.root / "vms" / "v1"  # its sockets: the agent's for the sync
    volume = daemon.root / "storage-pools" / "default" / "virtual-machines" / "v1"
    snaps = "/1.0/instances/v1/snapshots"
    daemon.corral("image", "build", "busybox", "--vm", timeout=300)
    daemon.corral("launch", "busybox-vm", "v1", "--vm", "-c", "limits.memory=256MiB")
    assert " /mnt/root ext4 " in _exec(daemon, "v1", "cat /proc/mounts")
    _exec(daemon, "v1", "echo one > /mnt/root/f && sync")
    assert guest_sync(vm_dir)  # what a live snapshot asks the agent first

    # A running VM: a live internal snapshot, then a restore (stop, revert, start).
    api.ok("POST", snaps, {"name": "s1"})
    assert api.get("/1.0/instances/v1")["status"] == "Running"
    _exec(daemon, "v1", "echo two > /mnt/root/f && sync")
    pid = api.get("/1.0/instances/v1/state")["pid"]
    api.ok("PUT", "/1.0/instances/v1", {"restore": "s1"})
    state = api.get("/1.0/instances/v1/state")
    assert state["status"] == "Running" and state["pid"] not in (0, pid)
    assert _exec(daemon, "v1", "cat /mnt/root/f").strip() == "one"

    # Bad input: clear errors, the VM keeps running untouched.
    pid = api.get("/1.0/instances/v1/state")["pid"]
    status, message = _error(api, "PUT", "/1.0/instances/v1", {"restore": "nope"})
    assert status == 404 and "not found" in message.lower()
    status, message = _error(api, "DELETE", f"{snaps}/nope")
    assert status == 404 and "not found" in message.lower()
    assert api.get("/1.0/instances/v1/state")["pid"] == pid

    # A stopped VM: qemu-img on the overlay; rename only renames.
    api.ok("PUT", "/1.0/instances/v1/state", {"action": "stop", "force": True})
    assert api.get("/1.0/instances/v1")["status"] == "Stopped"
    api.ok("POST", snaps, {"name": "s2"})
    assert len(_internal_tags(volume / "root.qcow2")) == 2
    api.ok("POST", f"{snaps}/s2", {"name": "s3"})
    api.ok("DELETE", f"{snaps}/s1")
    assert api.get(snaps) == [f"{snaps}/s3"]
    names = json.loads((volume / "snapshots.json").read_text())["snapshots"]
    assert list(names) == ["s3"] and _internal_tags(volume / "root.qcow2") == [names["s3"]]
    api.ok("PUT", "/1.0/instances/v1", {"restore": "s3"})  # stopped: stays stopped
    assert api.get("/1.0/instances/v1")["status"] == "Stopped"

    daemon.corral("delete", "--force", "v1")
    assert not vm_dir.exists() and not volume.exists()
    assert not list((daemon.root / "vms").iterdir())
    assert not list(volume.parent.iterdir())
