"""Faults for a dev cluster (``corral dev-cluster kill|start|partition|heal``).

The same functions serve people poking at a dev cluster and the chaos tests, so a
fault seen in a test can be replayed by hand. Everything is found through the cluster's
``devcluster.json`` (``devtools.devcluster``): each member's namespace, host address,
state directory and daemon pid.

- ``kill``: a signal to one member's daemon, only after checking that the pid is still
  that member's daemon (``devcluster.is_daemon_of``): pids are reused, and nothing the
  dev cluster did not start is ever signalled.
- ``kill(..., host=True)``: the whole host at once, daemon, containers and VMs
  (``host_kill``), as a power cut.
- ``start``: the member's daemon again, on its existing ``CORRAL_DIR`` (its journal and
  snapshot), in its namespace; the new pid is written back to ``devcluster.json``.
- ``partition``: iptables DROP rules inside the *named* members' namespaces, against
  the host addresses of every other member: INPUT and OUTPUT (both directions), or with
  ``one_way`` INPUT only (the rest cannot reach them; their own packets still leave).
  Rules are inserted first in the chain, so no ACCEPT of the daemon's own firewall
  (``node_agent/network/firewall.py``) lets established traffic past them.
  ``side`` picks the members for a *minority* or a *majority* partition (the side that
  is cut off, holding a given member, e.g. the leader).
- ``heal``: every rule tagged ``TAG``, in every member's namespace, found by its
  comment (never by position), so the daemon's own rules stay.
- ``start(..., clock_offset=S)``: the daemon with ``CORRAL_TEST_CLOCK_OFFSET=S`` in its
  environment, a test-only shift of that daemon's wall clock (time namespaces do not
  shift CLOCK_REALTIME, so a per-process offset is the only way on one machine).

On-disk faults (a damaged journal or snapshot, a full disk) are in ``nemesis_disk``.

Raises ``NemesisError`` with a message that says what to do.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools import host_kill
from devtools.devcluster import (
    container_bridge,
    container_network,
    is_daemon_of,
    read_state,
    write_state,
)
from devtools.harness import DaemonProcess
from devtools.netns import NetnsError, enter_argv, netns_path, run

TAG = "corral-nemesis"
CLOCK_OFFSET_ENV = "CORRAL_TEST_CLOCK_OFFSET"
SIDES = ("minority", "majority")
SIGNALS = {"KILL": signal.SIGKILL, "STOP": signal.SIGSTOP, "CONT": signal.SIGCONT,
           "TERM": signal.SIGTERM}


class NemesisError(RuntimeError):
    """A fault cannot be injected or removed; the message says why."""


@dataclass(frozen=True)
class Member:
    """What ``devcluster.json`` records of one member."""

    name: str
    netns: str
    ip: str
    root: Path
    pid: int | None

    @classmethod
    def from_state(cls, record: dict[str, Any]) -> Member:
        return cls(str(record["name"]), str(record["netns"]),
                   str(record["address"]).split("/")[0], Path(record["corral_dir"]),
                   record.get("pid"))


# ---- pure parts: which member, which rules ----------------------------------------------

def members_of(state: dict[str, Any]) -> list[Member]:
    """Every member of a dev cluster's state; NemesisError when there is none."""
    found = [Member.from_state(m) for m in state.get("members") or []]
    if not found:
        raise NemesisError("no dev cluster here: corral dev-cluster up --dir DIR first")
    return found


def pick(members: list[Member], names: list[str]) -> list[Member]:
    """The members called ``names`` (in that order); NemesisError for an unknown one."""
    by_name = {m.name: m for m in members}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise NemesisError(f"no member {', '.join(unknown)}; members: "
                           f"{', '.join(sorted(by_name))}")
    return [by_name[n] for n in dict.fromkeys(names)]


def partition_rules(isolated: list[Member], rest: list[Member],
                    one_way: bool = False) -> dict[str, list[list[str]]]:
    """iptables argv (without the namespace) per namespace of an isolated member: DROP
    what comes from each member of ``rest``, and unless ``one_way`` what goes to it."""
    if not isolated or not rest:
        raise NemesisError("a partition needs members on both sides")
    rules: dict[str, list[list[str]]] = {}
    tag = ["-m", "comment", "--comment", TAG]
    for member in isolated:
        rules[member.netns] = []
        for other in rest:
            rules[member.netns].append(["iptables", "-w", "-I", "INPUT", "-s", other.ip,
                                        *tag, "-j", "DROP"])
            if not one_way:
                rules[member.netns].append(["iptables", "-w", "-I", "OUTPUT", "-d", other.ip,
                                            *tag, "-j", "DROP"])
    return rules


def side(names: list[str], which: str, anchor: str | None = None,
         rng: random.Random | None = None) -> list[str]:
    """The members to cut off for a ``minority`` or ``majority`` partition of ``names``:
    the most members that are not a majority, or the fewest that are, always including
    ``anchor`` (e.g. the leader) when given, the rest chosen by ``rng`` (sorted order
    without it). With 3 members a minority is 1 member and a majority 2."""
    if which not in SIDES:
        raise NemesisError(f"unknown side {which!r}: minority or majority")
    if len(names) < 3:
        raise NemesisError("a minority/majority partition needs at least 3 members")
    if anchor is not None and anchor not in names:
        raise NemesisError(f"no member {anchor}; members: {', '.join(sorted(names))}")
    size = (len(names) - 1) // 2 if which == "minority" else len(names) // 2 + 1
    others = sorted(n for n in names if n != anchor)
    if rng is not None:
        rng.shuffle(others)
    chosen = ([anchor] if anchor is not None else []) + others
    return chosen[:size]


def tagged_deletions(listing: str) -> list[list[str]]:
    """``iptables -S`` output -> the argv that delete each rule tagged TAG."""
    deletions = []
    for line in listing.splitlines():
        words = shlex.split(line)
        if words[:1] == ["-A"] and TAG in words:
            deletions.append(["iptables", "-w", "-D", *words[1:]])
    return deletions


def signal_of(name: str) -> signal.Signals:
    """``KILL``, ``STOP``, ``CONT`` or ``TERM`` (with or without ``SIG``)."""
    found = SIGNALS.get(name.upper().removeprefix("SIG"))
    if found is None:
        raise NemesisError(f"unknown signal {name!r}: one of {', '.join(SIGNALS)}")
    return found


# ---- the faults --------------------------------------------------------------------------

def kill(directory: Path, name: str, sig: str = "KILL", timeout: float = 10.0,
         host: bool = False) -> int:
    """Send ``sig`` to member ``name``'s daemon; after KILL or TERM wait (at most
    ``timeout`` s) until it is gone, so that ``start`` may follow at once. Returns the pid.
    NemesisError if the member's daemon is not running.

    ``host``: the whole host dies (KILL only): every process of the member, its
    containers' monitors and processes, its VMs' QEMU, its dnsmasq (``host_kill``); the
    instances are then stopped when ``start`` brings the daemon back, as after a reboot."""
    member = pick(members_of(read_state(directory.resolve())), [name])[0]
    chosen = signal_of(sig)
    if host:
        return _kill_host(member, chosen, timeout)
    if member.pid is None or not is_daemon_of(member.pid, member.root):
        raise NemesisError(f"{name}'s daemon is not running: "
                           f"corral dev-cluster start {name}")
    os.kill(member.pid, chosen)
    if chosen in (signal.SIGKILL, signal.SIGTERM):
        deadline = time.monotonic() + timeout
        while is_daemon_of(member.pid, member.root):
            if time.monotonic() > deadline:
                raise NemesisError(f"{name}'s daemon (pid {member.pid}) is still running")
            time.sleep(0.02)
    return member.pid


def _kill_host(member: Member, chosen: signal.Signals, timeout: float) -> int:
    """SIGKILL the daemon first (it would restart what dies), then everything else of
    the member; the daemon's pid (0 if it was not running)."""
    if chosen != signal.SIGKILL:
        raise NemesisError("--host kills a whole host: only with --signal KILL")
    pid = member.pid if member.pid is not None and is_daemon_of(member.pid, member.root) else 0
    if pid:
        os.kill(pid, signal.SIGKILL)
    try:
        host_kill.kill_host(member.root, timeout)
    except TimeoutError as exc:
        raise NemesisError(f"{member.name}'s host did not die: {exc}") from exc
    return pid


def running(directory: Path, name: str) -> bool:
    """Whether member ``name``'s daemon is running (stopped by SIGSTOP counts)."""
    member = pick(members_of(read_state(directory.resolve())), [name])[0]
    return member.pid is not None and is_daemon_of(member.pid, member.root)


def start(directory: Path, name: str, timeout: float = 60.0,
          clock_offset: float | None = None) -> int:
    """Start member ``name``'s daemon again on its existing state; wait until it
    answers, record its pid and return it. NemesisError if it is already running.
    ``clock_offset``: seconds added to that daemon's wall clock (``CLOCK_OFFSET_ENV``)."""
    directory = directory.resolve()
    state = read_state(directory)
    member = pick(members_of(state), [name])[0]
    if member.pid is not None and is_daemon_of(member.pid, member.root):
        raise NemesisError(f"{name}'s daemon is already running (pid {member.pid})")
    index = [m["name"] for m in state["members"]].index(name) + 1
    extra = {} if clock_offset is None else {CLOCK_OFFSET_ENV: f"{clock_offset:g}"}
    daemon = DaemonProcess(root=member.root, bridge=container_bridge(index),
                           address=container_network(index), netns=member.netns,
                           extra_env=extra)
    daemon.spawn()
    assert daemon.process is not None
    state["members"][index - 1]["pid"] = daemon.process.pid
    write_state(directory, state)  # before waiting: ``down`` must find it if we fail
    try:
        daemon.wait_ready(timeout)
    except AssertionError as exc:
        raise NemesisError(f"{name} did not come back: {exc}") from exc
    return daemon.process.pid


def partition(directory: Path, names: list[str], one_way: bool = False) -> int:
    """Cut ``names`` off from every other member (see the module docstring); returns the
    number of rules added. On failure, the rules already added are removed."""
    members = members_of(read_state(directory.resolve()))
    isolated = pick(members, names)
    rest = [m for m in members if m not in isolated]
    added = 0
    try:
        for netns, rules in partition_rules(isolated, rest, one_way).items():
            for rule in rules:
                run(enter_argv(netns, rule))
                added += 1
    except NetnsError as exc:
        heal(directory)
        raise NemesisError(f"partition failed: {exc}") from exc
    return added


def partition_side(directory: Path, which: str, anchor: str | None = None,
                   one_way: bool = False, rng: random.Random | None = None) -> list[str]:
    """A ``minority`` or ``majority`` partition (see ``side``); returns who was cut off."""
    names = side([m.name for m in members_of(read_state(directory.resolve()))], which,
                 anchor, rng)
    partition(directory, names, one_way)
    return names


def heal(directory: Path) -> int:
    """Remove every TAG rule in every member's namespace; returns how many."""
    removed = 0
    for member in members_of(read_state(directory.resolve())):
        if not Path(netns_path(member.netns)).exists():
            continue
        listing = run(enter_argv(member.netns, ["iptables", "-w", "-S"]))
        for deletion in tagged_deletions(listing):
            run(enter_argv(member.netns, deletion), check=False)
            removed += 1
    return removed
