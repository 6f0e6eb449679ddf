"""The iptables rules of one managed network, each tagged ``corral NAME``.

Rules are found again by their comment, never by position, so removing them
leaves everybody else's rules alone. ``iptables -S`` prints a normalised spec
(``-p udp -m udp --dport 67``), so presence is checked with ``-C``, not by text.

Instances never reach the host's own ports (the API, Raft, migration streams, or
anything else listening on a host address): from the bridge, the host's INPUT
accepts only DHCP and DNS (its dnsmasq), ICMP, and replies to connections the host
opened; everything else is rejected. Traffic the host forwards (NAT to the outside,
other hosts) is not INPUT and is not affected.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from node_agent.network.errors import NetworkCommandError
from node_agent.network.hostcmd import run, write_sysctl

TABLES = ("nat", "filter")
SERVICES = (("udp", "67"), ("udp", "53"), ("tcp", "53"))  # DHCP and DNS from the bridge


@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    spec: tuple[str, ...]


def wanted_rules(bridge: str, subnet: str, nat: bool, comment: str,
                 policies: dict[str, str]) -> list[Rule]:
    """MASQUERADE for the subnet; the guard of the host's INPUT from the bridge (in
    the order the chain must hold them); ACCEPTs for OUTPUT and FORWARD only in chains
    whose policy is not ACCEPT."""
    tag = ("-m", "comment", "--comment", comment)
    rules = []
    if nat:
        rules.append(Rule("nat", "POSTROUTING",
                          ("-s", subnet, "!", "-d", subnet, *tag, "-j", "MASQUERADE")))
    rules += input_guard(bridge, tag)
    if policies.get("OUTPUT", "ACCEPT") != "ACCEPT":
        rules += [Rule("filter", "OUTPUT", ("-o", bridge, "-p", proto, "--sport", port, *tag,
                                            "-j", "ACCEPT")) for proto, port in SERVICES]
    if policies.get("FORWARD", "ACCEPT") != "ACCEPT":
        rules += [Rule("filter", "FORWARD", (flag, bridge, *tag, "-j", "ACCEPT"))
                  for flag in ("-i", "-o")]
    return rules


def input_guard(bridge: str, tag: tuple[str, ...]) -> list[Rule]:
    """What an instance on ``bridge`` may send to the host itself: DHCP and DNS, ICMP,
    replies; a REJECT after them (an answer at once, not a hang) for the rest."""
    def rule(match: tuple[str, ...], *target: str) -> Rule:
        return Rule("filter", "INPUT", ("-i", bridge, *match, *tag, "-j", *target))

    return [*(rule(("-p", proto, "--dport", port), "ACCEPT") for proto, port in SERVICES),
            rule(("-p", "icmp"), "ACCEPT"),
            rule(("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"), "ACCEPT"),
            rule(("-p", "tcp"), "REJECT", "--reject-with", "tcp-reset"),
            rule((), "REJECT", "--reject-with", "icmp-port-unreachable")]


def chain_policies(dump: str) -> dict[str, str]:
    """``{"INPUT": "DROP", ...}`` from ``iptables -S`` output."""
    policies = {}
    for line in dump.splitlines():
        args = line.split()
        if len(args) == 3 and args[0] == "-P":
            policies[args[1]] = args[2]
    return policies


def tagged_rules(dumps: dict[str, str], comment: str) -> list[Rule]:
    """Every rule in the ``iptables -S`` dumps (by table) that carries exactly ``comment``."""
    found = []
    for table, dump in dumps.items():
        for line in dump.splitlines():
            args = shlex.split(line)
            if len(args) < 3 or args[0] != "-A":
                continue
            if any(a == "--comment" and b == comment
                   for a, b in zip(args, args[1:], strict=False)):
                found.append(Rule(table, args[1], tuple(args[2:])))
    return found


def ensure_rules(bridge: str, subnet: str, nat: bool, comment: str) -> None:
    """Make our rules exactly the wanted ones; enable forwarding when NAT is on."""
    dumps = _dumps()
    wanted = wanted_rules(bridge, subnet, nat, comment, chain_policies(dumps["filter"]))
    ours = tagged_rules(dumps, comment)
    if len(ours) != len(wanted) or not all(_present(rule) for rule in wanted):
        # Rebuild rather than diff: the dump's specs are normalised, only -C compares.
        for rule in ours:
            iptables(rule.table, "-D", rule.chain, *rule.spec)
        # Filter rules go first, ahead of whatever drops, in their own order: each is
        # inserted at the top, so the last one in the list goes in first.
        for rule in [r for r in wanted if r.table == "nat"]:
            iptables(rule.table, "-A", rule.chain, *rule.spec)
        for rule in reversed([r for r in wanted if r.table != "nat"]):
            iptables(rule.table, "-I", rule.chain, *rule.spec)
    if nat:
        write_sysctl("net/ipv4/ip_forward", "1")


def remove_rules(comment: str) -> None:
    """Delete every rule tagged ``comment``; ip_forward stays (others may rely on it)."""
    for rule in tagged_rules(_dumps(), comment):
        iptables(rule.table, "-D", rule.chain, *rule.spec)


def iptables(table: str, *args: str) -> str:
    return run(["iptables", "-w", "5", "-t", table, *args])


def _dumps() -> dict[str, str]:
    return {table: iptables(table, "-S") for table in TABLES}


def _present(rule: Rule) -> bool:
    try:
        iptables(rule.table, "-C", rule.chain, *rule.spec)
    except NetworkCommandError:
        return False
    return True
