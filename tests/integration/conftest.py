"""A real corral daemon for integration tests, with its own dir, bridge and subnet."""

from __future__ import annotations

import os
import random
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devtools.harness import DaemonProcess
from node_agent.network.bridge import host_ipv4_networks, pick_subnet
from tests.integration.api import Api


def real_prerequisites() -> str:
    """Why real-component tests cannot run here, or ``""``."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("lxc-start", "lxc-attach", "dnsmasq", "iptables", "busybox"):
        if shutil.which(tool) is None and not Path(f"/bin/{tool}").exists():
            return f"needs {tool}"
    return ""


def new_daemon(tmp_root: Path) -> DaemonProcess:
    """A daemon on a /24 of 10.232.0.0/13 that no bridge on the host has yet.

    A subnet drawn blindly collided, once in a CI run, with the session daemon's own
    (dnsmasq: "Address already in use").
    """
    tag = secrets.token_hex(2)
    address = pick_subnet(host_ipv4_networks(), random.Random(), within="10.232.0.0/13")
    return DaemonProcess(root=tmp_root / f"corral-{tag}", bridge=f"ctb{tag}", address=address)


@contextmanager
def initialised_daemon() -> Iterator[DaemonProcess]:
    """A started, initialised daemon with the busybox image; destroyed afterwards."""
    problem = real_prerequisites()
    if problem:
        pytest.skip(problem)
    base = Path("/tmp") / f"corral-tests-{secrets.token_hex(3)}"
    base.mkdir(mode=0o711)
    proc = new_daemon(base)
    try:
        proc.start()
        proc.init()
        proc.corral("image", "build", "busybox", timeout=300)
        yield proc
    finally:
        proc.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def daemon() -> Iterator[DaemonProcess]:
    """One daemon shared by the session."""
    with initialised_daemon() as proc:
        yield proc


@pytest.fixture
def fresh_daemon() -> Iterator[DaemonProcess]:
    """A daemon of its own, for tests that restart or kill it."""
    with initialised_daemon() as proc:
        yield proc


@pytest.fixture
def api(daemon: DaemonProcess) -> Api:
    return Api(str(daemon.socket))
