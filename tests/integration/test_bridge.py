"""A real bridge with dnsmasq and NAT, and a DHCP client in a namespace that leases from it.

Every name is random (``cbt<hex>``) and every subnet is picked at random in
10.231.0.0/16 (a range kept for these tests), skipping the ones the host
already routes; nothing is probed.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.network.bridge import BridgeNetwork, host_ipv4_networks, pick_subnet
from node_agent.network.dnsmasq import _cmdline

pytestmark = pytest.mark.real
DHCP_SCRIPT = '#!/bin/sh\n[ "$1" = bound ] && echo "LEASE $ip $mask $router"\nexit 0\n'


def sh(*argv: str, timeout: float = 30) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True,
                          timeout=timeout).stdout


def netns(name: str, *argv: str, timeout: float = 30) -> str:
    return sh("nsenter", f"--net=/run/netns/{name}", *argv, timeout=timeout)


@pytest.fixture(autouse=True)
def _needs_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("ip", "iptables", "dnsmasq", "busybox", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


@pytest.fixture
def tag() -> str:
    return secrets.token_hex(2)


@pytest.fixture
def subnet() -> str:
    return pick_subnet(host_ipv4_networks(), random.Random(), within="10.231.0.0/16")


@pytest.fixture
def cleanup() -> Iterator[list[list[str]]]:
    """Commands run at the end whatever happened (namespaces, veths)."""
    commands: list[list[str]] = []
    yield commands
    for argv in reversed(commands):
        subprocess.run(argv, capture_output=True, timeout=30, check=False)


def attach_client(bridge: str, tag: str, cleanup: list[list[str]], ns_of_bridge: str = ""
                  ) -> str:
    """A namespace with a veth whose peer is a port of ``bridge``; returns the namespace."""
    ns, host_end, client_end = f"cbtns{tag}", f"cbth{tag}", f"cbtc{tag}"
    sh("ip", "netns", "add", ns)
    cleanup.append(["ip", "netns", "del", ns])
    enter = ["nsenter", f"--net=/run/netns/{ns_of_bridge}"] if ns_of_bridge else []
    sh(*enter, "ip", "link", "add", host_end, "type", "veth", "peer", "name", client_end)
    cleanup.append([*enter, "ip", "link", "del", host_end])
    sh(*enter, "ip", "link", "set", client_end, "netns", ns)
    sh(*enter, "ip", "link", "set", host_end, "master", bridge, "up")
    netns(ns, "ip", "link", "set", client_end, "up")
    return ns


def dhcp(ns: str, ifname: str, script: Path) -> str:
    """One DHCP exchange with busybox udhcpc; returns the lease line the script printed."""
    out = netns(ns, "busybox", "udhcpc", "-i", ifname, "-n", "-q", "-f", "-t", "6", "-T", "1",
                "-x", "hostname:cbtclient", "-s", str(script), timeout=40)
    return next(line for line in out.splitlines() if line.startswith("LEASE "))


def no_rules_tagged(comment: str, enter: tuple[str, ...] = ()) -> bool:
    dump = sh(*enter, "iptables", "-t", "nat", "-S") + sh(*enter, "iptables", "-t", "filter", "-S")
    return f'"{comment}"' not in dump


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "dhcp.sh"
    path.write_text(DHCP_SCRIPT)
    path.chmod(0o755)
    return path


def test_bridge_serves_dhcp_and_is_found_again_then_torn_down(
        tmp_path: Path, tag: str, subnet: str, script: Path, cleanup: list[list[str]]) -> None:
    name = f"cbt{tag}"
    net = BridgeNetwork(name, subnet, tmp_path / "net")
    cleanup.append([sys.executable, "-c", "from node_agent.network.bridge import BridgeNetwork;"
                    f"BridgeNetwork({name!r}, {subnet!r}, __import__('pathlib').Path("
                    f"{str(tmp_path / 'net')!r})).teardown()"])
    net.ensure()
    assert net.exists()
    assert subnet in sh("ip", "-4", "-br", "addr", "show", "dev", name)
    pid = net.dnsmasq.running_pid()
    assert pid is not None and f"--interface={name}" in _cmdline(pid)
    assert os.getppid() != pid and f"PPid:\t{os.getpid()}\n" not in Path(
        f"/proc/{pid}/status").read_text()  # a daemon of its own, not our child

    again = BridgeNetwork(name, subnet, tmp_path / "net")  # as a restarted corral would
    again.ensure()
    assert again.dnsmasq.running_pid() == pid
    assert sh("iptables", "-t", "nat", "-S").count(f'"corral {name}"') == 1

    ns = attach_client(name, tag, cleanup)
    lease = dhcp(ns, f"cbtc{tag}", script).split()
    gateway = subnet.split("/")[0]
    assert lease[1].rsplit(".", 1)[0] == gateway.rsplit(".", 1)[0] and lease[1] != gateway
    assert lease[3] == gateway
    client_mac = json.loads(netns(ns, "ip", "-j", "link", "show", f"cbtc{tag}"))[0]["address"]
    assert {"mac": client_mac, "address": lease[1], "hostname": "cbtclient"}.items() <= next(
        iter(net.leases())).items()

    again.teardown()
    assert not net.exists()
    assert not Path(f"/proc/{pid}").exists() or not _cmdline(pid)
    assert no_rules_tagged(f"corral {name}")
    assert not (tmp_path / "net").exists()
    again.teardown()  # idempotent


def test_new_address_restarts_dnsmasq_and_moves_the_rules(
        tmp_path: Path, tag: str, subnet: str, cleanup: list[list[str]]) -> None:
    name = f"cbt{tag}"
    state = tmp_path / "net"
    first = BridgeNetwork(name, subnet, state)
    cleanup.append(["ip", "link", "del", name])
    first.ensure()
    try:
        old_pid = first.dnsmasq.running_pid()
        other = pick_subnet([*host_ipv4_networks(), subnet], random.Random(), "10.231.0.0/16")
        moved = BridgeNetwork(name, other, state)
        moved.ensure()
        new_pid = moved.dnsmasq.running_pid()
        assert new_pid is not None and new_pid != old_pid
        assert f"--listen-address={other.split('/')[0]}" in _cmdline(new_pid)
        addrs = sh("ip", "-4", "-br", "addr", "show", "dev", name)
        assert other in addrs and subnet not in addrs
        nat = sh("iptables", "-t", "nat", "-S")
        assert nat.count(f'"corral {name}"') == 1 and moved.address.network.exploded in nat
    finally:
        BridgeNetwork(name, subnet, state).teardown()
    assert no_rules_tagged(f"corral {name}")


PY_IN_NS = (
    "import sys; from pathlib import Path; from node_agent.network.bridge import BridgeNetwork;"
    "n = BridgeNetwork(sys.argv[1], sys.argv[2], Path(sys.argv[3]));"
    "getattr(n, sys.argv[4])()"
)


def test_dhcp_passes_dropping_policies_in_a_host_namespace(
        tmp_path: Path, tag: str, script: Path, cleanup: list[list[str]]) -> None:
    """A whole host in a namespace, entered as multi-host tests do (nsenter: the host's
    /sys stays visible), with every filter policy DROP."""
    host = f"cbthost{tag}"
    sh("ip", "netns", "add", host)
    cleanup.append(["ip", "netns", "del", host])
    enter = ("nsenter", f"--net=/run/netns/{host}")
    for chain in ("INPUT", "OUTPUT", "FORWARD"):
        sh(*enter, "iptables", "-P", chain, "DROP")
    name, subnet = f"cbt{tag}", f"10.231.{random.randrange(256)}.1/24"
    state = tmp_path / "net"
    in_host = (*enter, sys.executable, "-c", PY_IN_NS, name, subnet,
               str(state))
    cleanup.append([*in_host, "teardown"])
    sh(*in_host, "ensure")  # its python exits: dnsmasq must live on
    filter_rules = sh(*enter, "iptables", "-S")
    # INPUT: the guard (DHCP, DNS x2, ICMP, replies, 2 REJECTs); OUTPUT: 3; FORWARD: 2
    assert filter_rules.count(f'"corral {name}"') == 12
    ns = attach_client(name, tag, cleanup, ns_of_bridge=host)
    assert dhcp(ns, f"cbtc{tag}", script).split()[3] == subnet.split("/")[0]
    sh(*in_host, "teardown")
    assert no_rules_tagged(f"corral {name}", enter)
    assert name not in sh(*enter, "ip", "-br", "link")
