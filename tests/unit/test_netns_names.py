"""Names and addresses of namespace hosts and dev-cluster members (pure helpers)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from devtools import devcluster
from devtools.netns import (
    NetnsError,
    bridge_name,
    enter_argv,
    gateway_address,
    host_address,
    netns_name,
    pick_subnet,
)


def test_longest_prefix_and_host_name_still_fit_an_ifname() -> None:
    assert len(netns_name("abcdefgh", "mabcde")) <= 15
    assert len(bridge_name("abcdefgh")) <= 15


@pytest.mark.parametrize("prefix", ["", "abcdefghi", "Ab", "1a", "a-b", "a/b"])
def test_prefixes_that_could_break_names_are_refused(prefix: str) -> None:
    with pytest.raises(NetnsError):
        bridge_name(prefix)


def test_bridge_takes_the_first_address_and_hosts_the_next_ones() -> None:
    assert gateway_address("10.77.3.0/24") == "10.77.3.1/24"
    assert [host_address("10.77.3.0/24", i) for i in (1, 2, 3)] == [
        "10.77.3.2/24", "10.77.3.3/24", "10.77.3.4/24"]
    with pytest.raises(NetnsError):
        host_address("10.77.3.0/24", 254)  # would be the broadcast address


def test_subnet_choice_avoids_every_routed_network() -> None:
    taken = ["10.77.0.0/24", "10.77.1.0/24", "10.77.4.0/23", "192.0.2.0/24"]
    assert pick_subnet(taken) == "10.77.2.0/24"
    assert pick_subnet([*taken, "10.77.2.0/25", "10.77.3.128/25"]) == "10.77.6.0/24"
    for seed in range(20):
        chosen = pick_subnet(taken, random.Random(seed))
        assert chosen.startswith("10.77.")
        assert chosen not in ("10.77.0.0/24", "10.77.1.0/24", "10.77.4.0/24", "10.77.5.0/24")
    with pytest.raises(NetnsError):
        pick_subnet(["10.77.0.0/16"])


def test_commands_enter_with_nsenter_and_keep_their_argv() -> None:
    argv = enter_argv("ct-m1", ["corral", "daemon"])
    assert argv == ["nsenter", "--net=/run/netns/ct-m1", "corral", "daemon"]
    private = enter_argv("ct-m1", ["corral", "daemon"], private_sysfs=True)
    assert private[:2] == argv[:2] and private[-2:] == ["corral", "daemon"]
    assert "exec" not in private[:2] and "netns" not in private[0]


def test_dev_cluster_names_are_stable_per_directory_and_distinct_per_member() -> None:
    prefix = devcluster.dev_prefix(Path("/var/lib/corral-dev"))
    assert prefix == devcluster.dev_prefix(Path("/var/lib/corral-dev/"))
    assert prefix != devcluster.dev_prefix(Path("/tmp/other"))
    bridge_name(prefix)  # a valid prefix
    assert len({devcluster.container_network(k) for k in range(1, 33)}) == 32
    assert len({devcluster.container_bridge(k) for k in range(1, 33)}) == 32
    assert all(len(devcluster.container_bridge(k)) <= 15 for k in range(1, 255))
