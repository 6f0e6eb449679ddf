"""What listens where on a single host, and who gets through: Raft on loopback with a
password, nothing on a wildcard, and no port of the host reachable from an instance."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devtools.harness import DaemonProcess
from node_agent.network import firewall
from tests.integration.api import Api
from tests.raft_probe import ask_status, listeners_of, send_file_creating_pickle

pytestmark = pytest.mark.real


def _daemon_pid(daemon: DaemonProcess) -> int:
    assert daemon.process is not None
    return daemon.process.pid


def _raft_address(daemon: DaemonProcess) -> str:
    return str(yaml.safe_load((daemon.root / "cluster.yaml").read_text())["raft_address"])


def test_raft_listens_on_loopback_only_and_the_secret_is_root_only(
        daemon: DaemonProcess) -> None:
    raft = _raft_address(daemon)
    assert raft.startswith("127.0.0.1:")
    listening = listeners_of(_daemon_pid(daemon))
    assert raft in listening
    wildcard = [a for a in listening if a.startswith(("0.0.0.0:", "[::]:"))]
    assert wildcard == [], f"the daemon listens on every interface: {wildcard}"
    assert (daemon.root / "raft" / "secret").stat().st_mode & 0o777 == 0o600


def test_an_unauthenticated_pickle_on_the_raft_port_has_no_effect(
        daemon: DaemonProcess, api: Api, tmp_path: Path) -> None:
    marker = tmp_path / f"pwned-{secrets.token_hex(3)}"
    send_file_creating_pickle(_raft_address(daemon), marker)
    assert not marker.exists()
    assert ask_status(_raft_address(daemon)) == b""
    assert api.get("/1.0")["api_status"]  # the daemon goes on serving


@pytest.fixture
def host_port(daemon: DaemonProcess) -> Iterator[tuple[str, int]]:
    """A TCP listener of the host's on the bridge's own address: any control port. It
    closes what it accepts, so a client that got through ends at once."""
    gateway = daemon.address.split("/")[0]
    with socket.socket() as server:
        server.bind((gateway, 0))
        server.listen(16)
        server.settimeout(0.2)
        stop = threading.Event()

        def close_what_comes() -> None:
            while not stop.is_set():
                try:
                    server.accept()[0].close()
                except TimeoutError:
                    continue

        closer = threading.Thread(target=close_what_comes, daemon=True)
        closer.start()
        try:
            yield gateway, server.getsockname()[1]
        finally:
            stop.set()
            closer.join()


@pytest.fixture
def running(api: Api) -> Iterator[str]:
    name = f"fw{secrets.token_hex(3)}"
    api.ok("POST", "/1.0/instances", {"name": name, "start": True,
                                      "source": {"type": "image", "alias": "busybox"}})
    yield name
    api.settle("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})
    api.settle("DELETE", f"/1.0/instances/{name}")


def _connects(daemon: DaemonProcess, name: str, host: str, port: int) -> bool:
    out = daemon.corral("exec", name, "--", "sh", "-c",
                        f"nc -w 2 {host} {port} </dev/null && echo CONNECTED || echo FAILED",
                        check=False, timeout=30).stdout
    return b"CONNECTED" in out


def _strip_rejects(bridge: str) -> None:
    """Take the guard's REJECTs out (the control case: the check must see a hole)."""
    dump = firewall.iptables("filter", "-S")
    for rule in firewall.tagged_rules({"filter": dump}, f"corral {bridge}"):
        if "REJECT" in rule.spec:
            firewall.iptables("filter", "-D", rule.chain, *rule.spec)


def _restore_rules(daemon: DaemonProcess) -> None:
    subnet = str(ipaddress.ip_interface(daemon.address).network)
    firewall.ensure_rules(daemon.bridge, subnet, True, f"corral {daemon.bridge}")


def test_an_instance_cannot_reach_a_port_of_its_host(
        daemon: DaemonProcess, running: str, host_port: tuple[str, int]) -> None:
    gateway, port = host_port
    with socket.create_connection(host_port, timeout=2):
        pass  # the host itself reaches it
    _strip_rejects(daemon.bridge)
    try:
        deadline = time.monotonic() + 30  # until the container has its DHCP address
        while not _connects(daemon, running, gateway, port):
            assert time.monotonic() < deadline, "the container never reached its host"
            time.sleep(0.5)
    finally:
        _restore_rules(daemon)
    assert not _connects(daemon, running, gateway, port)
    raft_port = _raft_address(daemon).rpartition(":")[2]
    assert not _connects(daemon, running, gateway, int(raft_port))
