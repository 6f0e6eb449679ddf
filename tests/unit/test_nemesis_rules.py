"""The pure parts of the dev cluster's nemesis: which members, which iptables rules,
which rules heal removes, and the verbs' command lines."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from corral_cli.parser import parse_args
from devtools.nemesis import (
    TAG,
    Member,
    NemesisError,
    members_of,
    partition_rules,
    pick,
    signal_of,
    tagged_deletions,
)

STATE = {"members": [
    {"name": f"m{i}", "netns": f"cdabc-m{i}", "address": f"10.77.5.{i + 1}/24",
     "corral_dir": f"/tmp/dev/m{i}", "pid": 100 + i} for i in (1, 2, 3)]}


def test_members_come_from_the_dev_clusters_state() -> None:
    m1, m2, m3 = members_of(STATE)
    assert m1 == Member("m1", "cdabc-m1", "10.77.5.2", Path("/tmp/dev/m1"), 101)
    assert pick([m1, m2, m3], ["m3", "m1", "m3"]) == [m3, m1]
    with pytest.raises(NemesisError, match="no member m9"):
        pick([m1, m2, m3], ["m9"])
    with pytest.raises(NemesisError, match="dev-cluster up"):
        members_of({})


def test_a_partition_drops_both_ways_inside_the_isolated_members_only() -> None:
    m1, m2, m3 = members_of(STATE)
    rules = partition_rules([m1], [m2, m3])
    assert list(rules) == ["cdabc-m1"]
    tag = ["-m", "comment", "--comment", TAG]
    assert rules["cdabc-m1"] == [
        ["iptables", "-w", "-I", "INPUT", "-s", "10.77.5.3", *tag, "-j", "DROP"],
        ["iptables", "-w", "-I", "OUTPUT", "-d", "10.77.5.3", *tag, "-j", "DROP"],
        ["iptables", "-w", "-I", "INPUT", "-s", "10.77.5.4", *tag, "-j", "DROP"],
        ["iptables", "-w", "-I", "OUTPUT", "-d", "10.77.5.4", *tag, "-j", "DROP"]]


def test_a_one_way_partition_drops_only_what_the_rest_sends_in() -> None:
    m1, m2, m3 = members_of(STATE)
    rules = partition_rules([m1, m2], [m3], one_way=True)
    assert {ns: [r[3:6] for r in found] for ns, found in rules.items()} == {
        "cdabc-m1": [["INPUT", "-s", "10.77.5.4"]], "cdabc-m2": [["INPUT", "-s", "10.77.5.4"]]}
    with pytest.raises(NemesisError, match="both sides"):
        partition_rules([m1, m2, m3], [])


def test_heal_deletes_exactly_the_tagged_rules() -> None:
    listing = "\n".join([
        "-P INPUT ACCEPT",
        "-A INPUT -s 10.77.5.3/32 -m comment --comment corral-nemesis -j DROP",
        '-A INPUT -i c1br0 -m comment --comment "corral c1br0" -j ACCEPT',
        "-A OUTPUT -d 10.77.5.3/32 -m comment --comment corral-nemesis -j DROP"])
    assert tagged_deletions(listing) == [
        ["iptables", "-w", "-D", "INPUT", "-s", "10.77.5.3/32", "-m", "comment",
         "--comment", TAG, "-j", "DROP"],
        ["iptables", "-w", "-D", "OUTPUT", "-d", "10.77.5.3/32", "-m", "comment",
         "--comment", TAG, "-j", "DROP"]]


def test_signals_by_name() -> None:
    assert signal_of("kill") is signal.SIGKILL and signal_of("SIGSTOP") is signal.SIGSTOP
    with pytest.raises(NemesisError, match="unknown signal"):
        signal_of("HUP")


def test_the_verbs_parse_like_the_other_dev_cluster_verbs() -> None:
    args = parse_args(["dev-cluster", "kill", "m2", "--signal", "stop", "--dir", "/d"])
    assert (args.handler, args.member, args.signal, args.dir) == ("devcluster:kill", "m2",
                                                                  "STOP", "/d")
    args = parse_args(["dev-cluster", "partition", "m1,m2", "--one-way"])
    assert (args.handler, args.members, args.one_way) == ("devcluster:partition", "m1,m2", True)
    assert parse_args(["dev-cluster", "heal"]).handler == "devcluster:heal"
    assert parse_args(["dev-cluster", "start", "m3"]).member == "m3"
    args = parse_args(["cluster", "check", "--format", "json", "--timeout", "30"])
    assert (args.handler, args.format, args.timeout) == ("cluster_cmds:check", "json", 30.0)
