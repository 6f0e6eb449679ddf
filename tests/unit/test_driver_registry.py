"""Drivers by instance type (``node_agent/drivers/registry.py``): a member asks for the
driver of an instance's type, and a type it cannot run answers with why."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from node_agent.drivers.base import DriverError
from node_agent.drivers.lxc import LxcDriver
from node_agent.drivers.qemu import QemuDriver
from node_agent.drivers.registry import CONTAINER, VM, DriverRegistry
from node_agent.idmap import IdMap
from node_agent.images import ImageStore
from node_agent.node import LocalNode
from node_agent.paths import Paths


class Stub:
    """Only what the registry reads of a driver: its instance type."""

    name: ClassVar[str] = "stub"
    instance_type: ClassVar[str] = "container"


def test_a_type_without_a_driver_says_why() -> None:
    registry = DriverRegistry()
    registry.register(Stub())  # type: ignore[arg-type]
    registry.unavailable(VM, "qemu-system-x86_64 not found")
    assert registry.types == [CONTAINER] and registry.has(CONTAINER) and not registry.has(VM)
    assert isinstance(registry.get(CONTAINER), Stub)
    with pytest.raises(DriverError) as caught:
        registry.get(VM)
    assert caught.value.code == 500
    assert caught.value.message == ("Virtual machines are not available on this member: "
                                    "qemu-system-x86_64 not found")
    assert registry.problem(VM) == "qemu-system-x86_64 not found"
    with pytest.raises(DriverError, match="'pod'.*no driver"):
        registry.get("pod")


def test_registering_a_type_clears_its_problem(tmp_path: Path) -> None:
    registry = DriverRegistry()
    registry.unavailable(VM, "not probed yet")
    registry.register(QemuDriver(tmp_path))
    assert registry.problem(VM) == "" and registry.types == [VM]
    assert [d.instance_type for d in registry] == [VM]


def test_a_node_serves_each_type_from_its_registry(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    idmap = IdMap(1_000_000, 65536, 1_000_000, 65536)
    lxc = LxcDriver(paths.containers, idmap, "t")
    node = LocalNode(paths, idmap, lxc, ImageStore(paths.images))
    assert node.instance_types == [CONTAINER] and node.driver_for(CONTAINER) is lxc
    assert node.vm_driver is None
    node.drivers.unavailable(VM, "no /usr/bin/qemu-system-x86_64")
    assert node.vm_problem == "no /usr/bin/qemu-system-x86_64"
    with pytest.raises(DriverError, match="no /usr/bin/qemu"):
        node.qemu()
    qemu = QemuDriver(paths.vms)
    node.drivers.register(qemu)
    assert node.vm_driver is qemu and node.instance_types == [CONTAINER, VM]
