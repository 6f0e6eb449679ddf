"""A daemon whose default pool is btrfs on a loop file: init choices, CoW creates,
snapshots, restore, delete, a restart, and a teardown that leaves no mount behind."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.harness import DaemonProcess
from node_agent.storage import btrfs_cli
from tests.integration.api import Api
from tests.integration.conftest import new_daemon, real_prerequisites

pytestmark = pytest.mark.real


@pytest.fixture
def bare() -> Iterator[DaemonProcess]:
    """A started daemon, not initialised; destroyed with its pool's mount and loop."""
    problem = real_prerequisites() or btrfs_cli.problem()
    if problem:
        pytest.skip(problem)
    base = Path("/tmp") / f"corral-tests-{secrets.token_hex(3)}"
    base.mkdir(mode=0o711)
    proc = new_daemon(base)
    try:
        proc.start()
        yield proc
    finally:
        proc.destroy()
        leftover = btrfs_cli.mounts_below(base)
        for mount in leftover:  # so a failure here does not leak the mount either
            btrfs_cli.unmount(mount)
        shutil.rmtree(base, ignore_errors=True)
        assert leftover == [], f"teardown left mounts: {leftover}"
        assert str(base) not in _losetup()


def _losetup() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True,
                          check=False).stdout


def _show(path: Path) -> dict[str, str]:
    out = btrfs_cli.run(["btrfs", "subvolume", "show", str(path)], "show")
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in
                                                  out.splitlines()[1:]) if v}


def _exec(proc: DaemonProcess, name: str, *cmd: str) -> str:
    return proc.corral("exec", name, "--", *cmd).stdout.decode()


def test_bad_storage_choices_are_refused_and_change_nothing(bare: DaemonProcess) -> None:
    api = Api(str(bare.socket))
    base = {"bridge_name": bare.bridge, "network_address": bare.address}
    for bad, words in (({"storage_backend": "zfs"}, "Unknown storage pool driver"),
                       ({"storage_backend": "btrfs", "storage_size": "lots"}, "Invalid size"),
                       ({"storage_backend": "btrfs", "storage_size": "1MiB"}, "too small"),
                       ({"storage_size": "5GiB"}, "applies to a btrfs pool")):
        status, doc = api.call("POST", "/internal/init", {**base, **bad})
        assert (status, doc["type"], doc["error_code"]) == (400, "error", 400), doc
        assert words in doc["error"], doc
    assert api.get("/1.0/storage-pools") == []
    assert api.get("/1.0/cluster/members") == []
    assert not (bare.root / "disks").exists()
    assert btrfs_cli.mounts_below(bare.root) == []


def test_containers_on_a_btrfs_loop_pool(bare: DaemonProcess) -> None:
    bare.corral("init", "--auto", "--bridge-name", bare.bridge, "--network-address",
                bare.address, "--storage-backend", "btrfs", "--storage-create-loop", "2")
    api = Api(str(bare.socket))
    pool = api.get("/1.0/storage-pools/default")
    assert (pool["driver"], pool["config"]) == ("btrfs", {"size": "2GiB"})
    mount = bare.root / "storage-pools" / "default"
    assert btrfs_cli.mounts_below(bare.root) == [mount] and btrfs_cli.is_btrfs(mount)
    assert (bare.root / "disks" / "default.img").stat().st_size == 2 << 30
    assert 1.5 * 2**30 < api.get("/1.0/storage-pools/default/resources")["space"]["total"]
    bare.corral("image", "build", "busybox", timeout=300)

    api.ok("POST", "/1.0/instances", {"name": "c1", "start": True,
                                      "source": {"type": "image", "alias": "busybox"}})
    volume = mount / "containers" / "c1"
    assert btrfs_cli.is_subvolume(volume)
    image = next((mount / "images").iterdir())
    assert _show(volume)["Parent UUID"] == _show(image)["UUID"]  # a CoW clone
    assert _exec(bare, "c1", "id", "-u").strip() == "0"  # idmapped root in a subvolume
    _exec(bare, "c1", "sh", "-c", "echo one > /root/marker")
    assert (volume / "rootfs/root/marker").stat().st_uid != 0  # written by the mapped root
    api.ok("POST", "/1.0/instances/c1/snapshots", {"name": "s1"})
    assert btrfs_cli.is_readonly(mount / "containers-snapshots/c1/s1")
    _exec(bare, "c1", "sh", "-c", "echo two > /root/marker")
    api.ok("PUT", "/1.0/instances/c1", {"restore": "s1"})
    assert api.get("/1.0/instances/c1")["status"] == "Running"
    assert _exec(bare, "c1", "cat", "/root/marker").strip() == "one"

    bare.stop()  # a restart keeps the mount and finds the pool as it was
    bare.start()
    assert btrfs_cli.mounts_below(bare.root) == [mount]
    assert _exec(bare, "c1", "cat", "/root/marker").strip() == "one"

    api.ok("DELETE", "/1.0/instances/c1/snapshots/s1")
    api.ok("PUT", "/1.0/instances/c1/state", {"action": "stop", "force": True})
    bare.corral("delete", "c1")
    listing = btrfs_cli.run(["btrfs", "subvolume", "list", str(mount)], "list")
    assert "containers/c1" not in listing and "containers-snapshots/c1" not in listing
    assert not volume.exists()


def test_a_vm_on_a_btrfs_pool_keeps_its_overlay_there(bare: DaemonProcess) -> None:
    """A VM's volume is a plain directory in the pool (its qcow2 overlay), as on dir."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu")
    # a sparse 12 GiB loop file: a VM's disk counts 10 GiB against the pool's capacity
    bare.corral("init", "--auto", "--bridge-name", bare.bridge, "--network-address",
                bare.address, "--storage-backend", "btrfs", "--storage-create-loop", "12")
    bare.corral("image", "build", "busybox", "--vm", timeout=300)
    bare.corral("launch", "busybox-vm", "v1", "--vm", "-c", "limits.memory=256MiB",
                timeout=300)
    api = Api(str(bare.socket))
    assert api.get("/1.0/instances/v1")["status"] == "Running"
    volume = bare.root / "storage-pools" / "default" / "virtual-machines" / "v1"
    assert (volume / "root.qcow2").is_file() and btrfs_cli.is_btrfs(volume)
    assert _exec(bare, "v1", "echo", "up").strip() == "up"
    bare.corral("delete", "--force", "v1", timeout=120)
    assert not volume.exists()
