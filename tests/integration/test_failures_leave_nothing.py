"""Failures inside the node agent are reported and leave nothing half-made behind."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from devtools.harness import DaemonProcess
from tests.integration.api import Api

pytestmark = pytest.mark.real


def _veths() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_start_failure_is_reported_and_leaves_no_veth_or_cgroup(daemon: DaemonProcess) -> None:
    api = Api(str(daemon.socket))
    api.ok("POST", "/1.0/profiles", {"name": "brokennic", "devices": {
        "eth0": {"type": "nic", "nictype": "bridged", "parent": "nosuchbr0", "name": "eth0"}}})
    api.ok("POST", "/1.0/instances", {"name": "badnic", "source": {"alias": "busybox"},
                                      "profiles": ["default", "brokennic"]})
    veths = _veths()
    try:
        status, doc = api.call("PUT", "/1.0/instances/badnic/state", {"action": "start"})
        assert status == 202
        op = api.wait(doc["operation"])
        assert op["status"] == "Failure" and "nosuchbr0" in op["err"], op
        assert api.get("/1.0/instances/badnic")["status"] == "Stopped"
        assert _veths() == veths
        assert not [p for p in Path("/sys/fs/cgroup/memory").glob("corral-*/badnic")
                    if any(p.iterdir()) and (p / "lxc.payload.badnic").exists()]
    finally:
        api.ok("DELETE", "/1.0/instances/badnic")
        api.ok("DELETE", "/1.0/profiles/brokennic")


def test_create_failure_in_the_agent_removes_the_record_and_the_rootfs(
        daemon: DaemonProcess) -> None:
    """An image whose files vanished from disk: the create fails cleanly."""
    api = Api(str(daemon.socket))
    built = daemon.root / "broken-image"
    built.mkdir()
    daemon.corral("image", "export", "busybox", str(built))
    tarball = next(built.iterdir())
    # Import a second copy under a different fingerprint, then remove its files on disk.
    payload = tarball.read_bytes() + b"\0" * 1024  # tar tolerates trailing zero blocks
    status, _, raw = api.raw("POST", "/1.0/images", payload,
                             {"Content-Type": "application/octet-stream"})
    import json

    fingerprint = api.wait(json.loads(raw)["operation"])["metadata"]["fingerprint"]
    shutil.rmtree(daemon.root / "images" / fingerprint)
    status, doc = api.call("POST", "/1.0/instances", {
        "name": "noimagefiles", "source": {"type": "image", "fingerprint": fingerprint}})
    assert status == 202
    result = api.wait(doc["operation"])
    assert result["status"] == "Failure" and result["err"]
    assert "noimagefiles" not in [u.rsplit("/", 1)[1] for u in api.get("/1.0/instances")]
    pool = daemon.root / "storage-pools" / "default" / "containers"
    assert not (pool / "noimagefiles").exists()
    assert not (daemon.root / "containers" / "noimagefiles").exists()
    api.ok("DELETE", f"/1.0/images/{fingerprint}")
    shutil.rmtree(built, ignore_errors=True)
