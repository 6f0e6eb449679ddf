"""``NodeFacade`` (``node_agent/facade.py``), the API's one way to this member's host,
over real parts that touch nothing running: the container driver and QEMU driver
objects (no container or VM is started), a fake driver at the driver boundary, the
image store, and a real one-member Raft store for the agent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from node_agent.agent import NodeAgent
from node_agent.drivers.base import DriverError
from node_agent.drivers.lxc import LxcDriver
from node_agent.drivers.qemu import QemuDriver
from node_agent.drivers.registry import VM
from node_agent.facade import InstanceSpec, NodeFacade
from node_agent.idmap import IdMap
from node_agent.images import ImageStore
from node_agent.node import LocalNode
from node_agent.paths import Paths
from tests.unit.served_api import served_api


class EchoDriver:
    """A driver of containers that runs nothing: its exec argv says what was asked."""

    name: ClassVar[str] = "echo"
    instance_type: ClassVar[str] = "container"

    def exec_argv(self, name: str, command: list[str], env: dict[str, str], cwd: str,
                  uid: int, gid: int) -> list[str]:
        return ["echo", name, cwd, str(uid), str(gid), *command]


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[NodeFacade, LocalNode]]:
    with served_api(tmp_path / "served") as served:
        paths = Paths(tmp_path / "host")
        paths.ensure()
        idmap = IdMap(1_000_000, 65536, 1_000_000, 65536)
        node = LocalNode(paths, idmap, LxcDriver(paths.containers, idmap, "t"),
                         ImageStore(paths.images))
        node.add_pool("default")
        yield NodeFacade(node, NodeAgent("m1", served.store, node)), node


def test_a_member_without_vms_says_why_for_each_vm_call(
        parts: tuple[NodeFacade, LocalNode]) -> None:
    host, node = parts
    node.drivers.unavailable(VM, "qemu-system-x86_64: not found")
    with pytest.raises(DriverError) as caught:
        host.vm_console_dir("v1")
    assert caught.value.code == 503 and "qemu-system-x86_64: not found" in caught.value.message
    with pytest.raises(DriverError, match="Virtual machines are not available"):
        host.exec_argv(VM, "v1", ["true"], {}, "/", 0, 0)
    with pytest.raises(DriverError, match="Virtual machines are not available"):
        host.finish_incoming("v1")
    assert "qemu" not in host.driver_info()["driver"]


def test_exec_goes_to_the_driver_of_the_instance_type(
        parts: tuple[NodeFacade, LocalNode]) -> None:
    host, node = parts
    node.drivers.register(EchoDriver())  # type: ignore[arg-type]
    assert host.exec_argv("container", "c1", ["ls"], {}, "/root", 7, 8) == \
        ["echo", "c1", "/root", "7", "8", "ls"]
    assert host.exec_output_dir("c1") == node.paths.exec_output / "c1"


def test_log_files_find_a_vms_serial_console_and_recorded_exec_output(
        parts: tuple[NodeFacade, LocalNode]) -> None:
    host, node = parts
    qemu = QemuDriver(node.paths.vms)
    node.drivers.register(qemu)
    assert host.log_files("v1") == {"lxc.log": node.paths.containers / "v1" / "lxc.log"}
    qemu.log_path("v1").parent.mkdir(parents=True)
    qemu.log_path("v1").write_text("booted\n")
    out = host.exec_output_dir("v1")
    out.mkdir(parents=True)
    (out / "exec_1.stdout").write_text("hi\n")
    (out / "other").write_text("")
    files = host.log_files("v1")
    assert files["console.log"] == qemu.log_path("v1")
    assert host.exec_files("v1") == {"exec_1.stdout": out / "exec_1.stdout"}
    assert set(files) == {"lxc.log", "console.log", "exec_1.stdout"}
    assert host.vm_console_dir("v1") == qemu.vm_dir("v1")


def test_file_target_shifts_ids_unless_privileged(parts: tuple[NodeFacade, LocalNode]) -> None:
    host, node = parts
    spec = InstanceSpec("u1", "c1", "img", {}, {"root": {"type": "disk", "path": "/",
                                                         "pool": "default"}})
    target = host.file_target(spec)
    assert target.rootfs == node.pools["default"].rootfs_path("c1")
    assert (target.uid_shift, target.gid_shift, target.count) == (1_000_000, 1_000_000, 65536)
    spec.config["security.privileged"] = "true"
    assert host.file_target(spec).uid_shift == 0
    spec.devices["root"]["pool"] = "elsewhere"
    with pytest.raises(DriverError, match="'elsewhere' is not available"):
        host.file_target(spec)


def test_images_and_migration_input_errors_are_typed(
        parts: tuple[NodeFacade, LocalNode]) -> None:
    host, _ = parts
    host.delete_image("f" * 64)  # no files here is the goal: no error
    with pytest.raises(DriverError) as caught:
        host.check_incoming({"host": 1})
    assert caught.value.code == 400
    with pytest.raises(ValueError):
        host.check_vm_accelerator_mode("warp")
    assert host.network_leases("nonet") is None
