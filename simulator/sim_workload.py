"""The simulator's workload: the commands that build a simulated cluster, the command that
creates one instance, and :class:`Placer`, which plans with the ``IndexedScheduler`` and
keeps its view in step with what was accepted.

Both modes of ``simulator.simulate`` use these, so a pure run and a Raft run place the
same instances the same way; only where a placement is committed differs (the planner's
view, or the replicated state through ``instance.create``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cluster.state import validate
from cluster.state.commands import Command, command
from cluster.state.model import State
from corral_shared.resources import Resources
from scheduler.plan import Plan
from scheduler.request import PlacementRequest, request_for
from scheduler.view import ClusterView
from simulator.fake_driver import POOL, SimInstance, SimMember
from simulator.index import IndexedScheduler

IMAGE = hashlib.sha256(b"corral scheduler simulator image").hexdigest()
NETWORK = "simbr0"
# Simulated members send no heartbeats (the simulator loads placement and apply, not the
# heartbeat path). No leader judges liveness in the simulator, so members stay ONLINE as
# committed; the day-long threshold would keep them so under a real daemon too.
OFFLINE_THRESHOLD = "86400"
JOIN_SECRET = "simulated"  # the join tokens' "hash" (never checked against a secret)
REPLAN_ATTEMPTS = 5  # plans of one instance refused by apply before it is given up


def bootstrap_command(first: SimMember) -> Command:
    """The ``cluster.bootstrap`` that makes ``first`` a one-member cluster."""
    return command("cluster.bootstrap",
                   member={"name": first.name, "address": first.address,
                           "raft_address": first.raft_address, "capacity": first.capacity,
                           "architecture": first.architecture},
                   pool={"name": POOL, "driver": "dir"}, network={"name": NETWORK},
                   config={"cluster.offline_threshold": OFFLINE_THRESHOLD})


def image_command() -> Command:
    return command("image.add", fingerprint=IMAGE,
                   info={"type": "container", "architecture": "x86_64",
                         "properties": {"description": "simulated image"}})


def token_command(member: SimMember, now: float) -> Command:
    return command("join_token.add", name=member.name, secret_hash=JOIN_SECRET,
                   expires_at=now + 86400)


def join_command(member: SimMember) -> Command:
    return command("member.join", name=member.name, secret_hash=JOIN_SECRET,
                   address=member.address, raft_address=member.raft_address,
                   architecture=member.architecture, capacity=member.capacity)


def setup_phases(members: list[SimMember], now: float) -> list[list[Command]]:
    """The commands that build the cluster, in phases: each phase needs the one before
    committed, the commands within a phase are independent (they may be pipelined)."""
    return [[bootstrap_command(members[0]), image_command()],
            [token_command(m, now) for m in members[1:]],
            [join_command(m) for m in members[1:]]]


def create_command(spec: SimInstance, member: str, attempt: int = 0) -> Command:
    """``instance.create`` of ``spec`` planned on ``member``; apply re-validates the plan.

    Each attempt is a new command id (apply answers a repeated id with its first result);
    ids are made from the instance's uid rather than ``uuid4`` (cheaper, as unique).
    """
    return Command(id=f"sim-{spec.uid}-{attempt}", type="instance.create", time=time.time(),
                   args=create_args(spec, member))


def create_many_command(plan: list[tuple[SimInstance, str]]) -> Command:
    """``instance.create_many`` of a plan of first attempts, (instance, member) pairs; its
    id is made from the first instance's uid, which is in no other plan."""
    return Command(id=f"sim-plan-{plan[0][0].uid}", type="instance.create_many",
                   time=time.time(), args={"items": [create_args(spec, member)
                                                     for spec, member in plan]})


def create_args(spec: SimInstance, member: str) -> dict[str, Any]:
    return {"name": spec.name, "uid": spec.uid, "type": "container",
            "architecture": "x86_64", "image": IMAGE, "location": member,
            "profiles": ["default"], "config": spec.config, "devices": spec.devices}


@dataclass
class Tally:
    """What became of each instance asked for."""

    placed: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # instance -> why
    replanned: int = 0  # plans refused by apply ("no longer fits") and planned again
    where: dict[str, str] | None = None  # instance -> member, when recorded

    def place(self, name: str, member: str) -> None:
        self.placed += 1
        if self.where is not None:
            self.where[name] = member

    def refuse(self, name: str, reason: str) -> None:
        self.refused[name] = reason or "refused without a reason"

    def reasons(self) -> Counter[str]:
        """Refusals by reason, the figures of the message left out."""
        return Counter(reason.split(";")[0] for reason in self.refused.values())

    def as_dict(self) -> dict[str, Any]:
        return {"placed": self.placed, "refused": self.refused, "replanned": self.replanned,
                "where": self.where}


class Placer:
    """One planner: an ``IndexedScheduler`` over its own view of the cluster.

    ``profile`` is the cluster's ``default`` profile (config, devices), which every
    simulated instance uses, so a request's demand is the one apply computes.
    """

    def __init__(self, view: ClusterView, profile: dict[str, Any]) -> None:
        self.scheduler = IndexedScheduler(view)
        self._profiles = [profile]

    @staticmethod
    def default_profile(state: State) -> dict[str, Any]:
        found = state.profiles["default"]
        return {"config": dict(found.config), "devices": dict(found.devices)}

    def request(self, spec: SimInstance) -> PlacementRequest:
        """The placement request for ``spec``, its profile applied."""
        config, devices = validate.expand(self._profiles, spec.config, spec.devices)
        return request_for(id=spec.uid, name=spec.name, type="container",
                           architecture="x86_64", config=config, devices=devices)

    def place(self, request: PlacementRequest) -> Plan:
        return self.scheduler.place(request)

    def commit(self, member: str, request: PlacementRequest) -> None:
        self.scheduler.commit(member, request.demand, request.placement_group)

    def release(self, member: str, request: PlacementRequest) -> None:
        self.scheduler.release(member, request.demand, request.placement_group)

    def refresh(self, member: str, reserved: Resources) -> None:
        """Take ``member``'s reservations from the committed state (after apply refused a
        plan on it: this planner's view was missing another planner's placements)."""
        found = self.scheduler.view.members[member]
        self.scheduler.update_member(dataclasses.replace(found, reserved=reserved))


@dataclass
class Report:
    """The figures of one simulator run (``simulator.simulate`` prints them)."""

    mode: str  # "pure" | "raft"
    members: int
    instances: int
    seed: int
    tally: Tally
    seconds: float = 0.0  # placing the instances (committed, in Raft mode)
    setup_seconds: float = 0.0  # building the cluster (and, pure, the requests)
    total_seconds: float = 0.0  # wall time of the whole run
    rss: dict[str, int] = field(default_factory=dict)  # replica -> bytes
    peak_rss: dict[str, int] = field(default_factory=dict)  # replica -> bytes (VmHWM)
    cpu: dict[str, float] = field(default_factory=dict)  # replica -> CPU seconds used
    digests: dict[str, str] = field(default_factory=dict)  # replica -> state digest
    compacted: dict[str, int] = field(default_factory=dict)  # replica -> log compactions
    journal: dict[str, int] = field(default_factory=dict)  # replica -> journal bytes at the end
    stalls: dict[str, float] = field(default_factory=dict)  # replica -> longest compaction step
    terms: dict[str, int] = field(default_factory=dict)  # replica -> Raft term at the end
    # (wall time, replica, what, seconds): compactions and Raft-thread stalls
    events: list[tuple[float, str, str, float]] = field(default_factory=list)
    placing_from: float = 0.0  # wall time placing began
    marks: dict[str, str] = field(default_factory=dict)  # replica -> digest at a replica.mark
    snapshot: dict[str, float] = field(default_factory=dict)
    states: list[State] | None = None  # the replicas' final states (small runs only)
    notes: list[str] = field(default_factory=list)

    @property
    def placements_per_second(self) -> float:
        return self.tally.placed / self.seconds if self.seconds > 0 else 0.0


def state_digest(state: State) -> str:
    """A digest of what placement produced in ``state``: every member's capacity and
    totals, every instance's uid, location and demand, in the state's own order (apply is
    deterministic, so replicas that applied the same log have the same order)."""
    digest = hashlib.sha256()
    for member in state.members.values():
        digest.update(f"{member.name} {sorted(member.capacity.items())}\n".encode())
    for name, total in (state.reserved or {}).items():
        digest.update(f"{name} {total}\n".encode())
    for inst in state.instances.values():
        digest.update(f"{inst.name} {inst.uid} {inst.location} {inst.demand}\n".encode())
    digest.update(f"index {state.index}".encode())
    return digest.hexdigest()
