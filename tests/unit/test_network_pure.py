"""The pure parts of node_agent.network: validation, DHCP ranges, rule sets, lease parsing."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from node_agent.network.bridge import (
    BridgeNetwork,
    dhcp_range,
    list_host_interfaces,
    parse_address,
    pick_subnet,
    validate_name,
)
from node_agent.network.dnsmasq import Dnsmasq, DnsmasqConfig, parse_leases
from node_agent.network.errors import NetworkError
from node_agent.network.firewall import Rule, chain_policies, tagged_rules, wanted_rules


@pytest.mark.parametrize("name", ["lxdbr0", "corralbr0", "a", "br_1.test-x", "x" * 15])
def test_linux_ifnames_are_accepted(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "a b", "a:b", "-br", ".br", "..", "bré"])
def test_names_that_are_not_linux_ifnames_are_refused_with_400(name: str) -> None:
    with pytest.raises(NetworkError) as info:
        validate_name(name)
    assert info.value.code == 400


@pytest.mark.parametrize("cidr", [
    "10.0.0.1", "fd00::1/64", "10.0.0.1/31", "10.0.0.1/32", "10.0.0.1/7", "10.0.0.0/24",
    "10.0.0.255/24", "10.0.0.300/24", "auto", "",
])
def test_bad_bridge_addresses_are_refused_with_400(cidr: str) -> None:
    with pytest.raises(NetworkError) as info:
        parse_address(cidr)
    assert info.value.code == 400


@pytest.mark.parametrize(("cidr", "expected"), [
    ("10.190.72.1/24", ("10.190.72.2", "10.190.72.254")),
    ("10.190.72.254/24", ("10.190.72.1", "10.190.72.253")),
    ("10.190.72.100/24", ("10.190.72.101", "10.190.72.254")),
    ("10.190.72.200/24", ("10.190.72.1", "10.190.72.199")),
    ("10.0.0.1/30", ("10.0.0.2", "10.0.0.2")),
    ("172.16.0.1/16", ("172.16.0.2", "172.16.255.254")),
])
def test_dhcp_range_is_the_largest_run_of_hosts_without_the_gateway(
        cidr: str, expected: tuple[str, str]) -> None:
    assert dhcp_range(cidr) == expected


def test_pick_subnet_avoids_taken_networks_and_is_seeded() -> None:
    taken = ["10.0.0.0/9"]  # half the pool
    first = pick_subnet(taken, random.Random(7))
    assert first == pick_subnet(taken, random.Random(7))
    assert first.startswith("10.") and first.endswith(".1/24")
    assert int(first.split(".")[1]) >= 128


def test_pick_subnet_fails_when_everything_is_taken() -> None:
    with pytest.raises(NetworkError):
        pick_subnet(["10.0.0.0/24", "10.0.1.0/24"], random.Random(1), within="10.0.0.0/23")


def test_info_has_lxds_managed_bridge_shape(tmp_path: Path) -> None:
    info = BridgeNetwork("corralbr0", "10.190.72.1/24", tmp_path, nat=False).info()
    assert info == {
        "name": "corralbr0", "description": "", "type": "bridge", "managed": True,
        "status": "Created",
        "config": {"ipv4.address": "10.190.72.1/24", "ipv4.nat": "false",
                   "ipv6.address": "none"},
        "used_by": [], "locations": ["none"],
    }


def test_accepting_policies_get_masquerade_and_the_input_guard_only() -> None:
    rules = wanted_rules("br0", "10.1.2.0/24", True, "corral br0", {"INPUT": "ACCEPT"})
    assert rules[0] == Rule("nat", "POSTROUTING", (
        "-s", "10.1.2.0/24", "!", "-d", "10.1.2.0/24", "-m", "comment", "--comment",
        "corral br0", "-j", "MASQUERADE"))
    assert {r.chain for r in rules[1:]} == {"INPUT"}
    assert wanted_rules("br0", "10.1.2.0/24", False, "corral br0", {}) == rules[1:]


def test_the_input_guard_accepts_dhcp_dns_icmp_and_replies_then_rejects_the_rest() -> None:
    rules = wanted_rules("br0", "10.1.2.0/24", False, "corral br0", {})
    assert all(r.spec[:2] == ("-i", "br0") and "corral br0" in r.spec for r in rules)
    targets = [r.spec[r.spec.index("-j") + 1] for r in rules]
    assert targets == ["ACCEPT"] * 5 + ["REJECT", "REJECT"]  # rejects after every accept
    assert rules[-1].spec == ("-i", "br0", "-m", "comment", "--comment", "corral br0",
                              "-j", "REJECT", "--reject-with", "icmp-port-unreachable")
    assert ("-p", "udp", "--dport", "67") == rules[0].spec[2:6]


def test_dropping_policies_get_tagged_accepts_for_outbound_and_forwarding() -> None:
    policies = {"INPUT": "DROP", "OUTPUT": "DROP", "FORWARD": "DROP"}
    rules = wanted_rules("br0", "10.1.2.0/24", False, "corral br0", policies)
    assert [r.chain for r in rules] == ["INPUT"] * 7 + ["OUTPUT"] * 3 + ["FORWARD"] * 2
    assert all(r.table == "filter" and "corral br0" in r.spec for r in rules)


DUMP = """-P INPUT DROP
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-A INPUT -i br1 -p udp -m udp --dport 67 -m comment --comment "corral br1" -j ACCEPT
-A INPUT -i br10 -p udp -m udp --dport 67 -m comment --comment "corral br10" -j ACCEPT
-A INPUT -s 10.0.0.0/8 -m comment --comment "corral br1 but not ours" -j DROP
-A FORWARD -j DOCKER-USER
"""


def test_policies_are_read_from_iptables_save_style_dump() -> None:
    assert chain_policies(DUMP) == {"INPUT": "DROP", "FORWARD": "ACCEPT", "OUTPUT": "ACCEPT"}


def test_tagged_rules_match_the_whole_comment_only() -> None:
    found = tagged_rules({"filter": DUMP, "nat": ""}, "corral br1")
    assert found == [Rule("filter", "INPUT", (
        "-i", "br1", "-p", "udp", "-m", "udp", "--dport", "67", "-m", "comment",
        "--comment", "corral br1", "-j", "ACCEPT"))]


def test_lease_file_parsing_skips_ipv6_and_anonymous_hostnames() -> None:
    text = ("1700000000 00:16:3E:AA:BB:CC 10.1.2.50 web1 01:00:16:3e:aa:bb:cc\n"
            "1700000100 00:16:3e:aa:bb:dd 10.1.2.51 * *\n"
            "duid 00:01:00:01:2c:aa\n"
            "1700000200 1234 fd42::5 web1 00:01\n")
    assert parse_leases(text) == [
        {"mac": "00:16:3e:aa:bb:cc", "address": "10.1.2.50", "hostname": "web1",
         "expires": 1700000000},
        {"mac": "00:16:3e:aa:bb:dd", "address": "10.1.2.51", "hostname": "", "expires": 1700000100},
    ]


def test_dnsmasq_command_line_is_lxds_with_our_state_files(tmp_path: Path) -> None:
    argv = DnsmasqConfig("br0", "10.1.2.1", "10.1.2.2", "10.1.2.254", tmp_path).argv()
    for flag in ("--strict-order", "--bind-interfaces", "--except-interface=lo", "--no-ping",
                 "--interface=br0", "--listen-address=10.1.2.1", "--dhcp-authoritative",
                 f"--pid-file={tmp_path}/dnsmasq.pid", "--conf-file=/dev/null",
                 f"--dhcp-leasefile={tmp_path}/dnsmasq.leases", "--local=/corral/"):
        assert flag in argv
    assert argv[argv.index("--dhcp-range") + 1] == "10.1.2.2,10.1.2.254,1h"


def test_a_pid_file_naming_someone_elses_process_is_not_ours(tmp_path: Path) -> None:
    dnsmasq = Dnsmasq(DnsmasqConfig("br0", "10.1.2.1", "10.1.2.2", "10.1.2.254", tmp_path))
    dnsmasq.config.pid_file.write_text(f"{os.getpid()}\n")
    assert dnsmasq.running_pid() is None
    dnsmasq.stop()  # must not signal this test process
    assert not dnsmasq.config.pid_file.exists()


def test_a_stale_pid_file_is_not_a_running_dnsmasq(tmp_path: Path) -> None:
    dnsmasq = Dnsmasq(DnsmasqConfig("br0", "10.1.2.1", "10.1.2.2", "10.1.2.254", tmp_path))
    dnsmasq.config.pid_file.write_text("999999999\n")
    assert dnsmasq.running_pid() is None
    assert dnsmasq.leases() == []


def test_host_interfaces_include_loopback_and_no_veths() -> None:
    found = list_host_interfaces()
    assert {"name": "lo", "description": "", "type": "loopback", "managed": False,
            "status": "", "config": {}, "used_by": [], "locations": None} in found
    assert not any(i["name"].startswith("veth") for i in found)
    assert "lo" not in [i["name"] for i in list_host_interfaces(exclude=["lo"])]
