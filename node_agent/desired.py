"""What the agent must do to an instance's existence, name and spec: desired against seen.

Beside ``converge.plan_power`` (the power state) this is the rest of an instance's
desired record. The record says the instance exists here under a name with a spec
(``Record``); the agent's last report says what it made of that (``Reported``: whether
it ever created the instance, the name it has on the host, the spec revision applied).
``plan_instance`` compares both with whether the host has the instance now and returns
the idempotent steps that close the difference. Being pure, it is the same after a
restart, a crash or a failover: there is no queue of one-shot changes to replay.

Why each aspect is what it is:
- create: the instance is created only while the agent has never reported it created
  (``Reported.created``). A member that lost the volume of an instance it did create
  reports that (``MISSING``) and never silently re-creates a pet from its image.
- rename: the record's name against the name the host has (``Reported.name``); a rename
  committed twice before the agent came to it (a -> b -> c) is one rename a -> c.
- update: a revision (``Record.spec_gen``, the generation of the last spec change)
  against the revision applied; the driver's update is idempotent.
- delete: ``power == "Deleted"`` removes whatever the host has under its local name.
- a move (``Record.moving``) holds the instance: the move controller copies and switches
  it, so convergence neither creates nor reports it missing behind the move's back.

Each step carries the generation that asked for it, so a failure is reported against
the operation that caused it (the API fails that operation with the agent's error).
"""

from __future__ import annotations

from dataclasses import dataclass

MISSING = "The instance's volume is missing on this member"


@dataclass(frozen=True)
class Record:
    """The desired existence, name and spec of one instance (its replicated record)."""

    name: str
    generation: int
    deleted: bool = False  # power == "Deleted"
    spec_gen: int = 0  # generation of the last spec change (update, patch)
    name_gen: int = 0  # generation of the last rename
    moving: bool = False


@dataclass(frozen=True)
class Reported:
    """What the agent last reported of it (the replicated ``observed``)."""

    created: bool = True
    name: str = ""  # the name on the host ("" = the record's)
    spec_gen: int = 0


@dataclass(frozen=True)
class Step:
    kind: str  # rename|create|update|delete (``actions.perform``), or missing
    generation: int  # the generation that asked for it: a failure is reported there
    old: str = ""  # rename: the name on the host; delete: the name to remove


def local_name(want: Record, seen: Reported) -> str:
    """The name the instance has on the host."""
    return seen.name or want.name


def plan_instance(want: Record, seen: Reported, present: bool) -> tuple[Step, ...]:
    """The steps that take the host to ``want``. ``present``: the host has the instance,
    under its local name or already under the record's (a rename done, then a crash
    before its report). A ``missing`` step ends the plan: nothing can be done."""
    local = local_name(want, seen)
    if want.deleted:  # under both names: a rename may be done and not yet reported
        names = dict.fromkeys((local, want.name))
        return tuple(Step("delete", want.generation, name) for name in names)
    if want.moving:
        return ()
    steps: list[Step] = []
    if local != want.name and (seen.created or present):
        steps.append(Step("rename", want.name_gen, local))
    if not seen.created:
        # Made with the current spec. Its failure fails every change asked so far (the
        # record is dropped), so it is reported at the record's generation.
        steps.append(Step("create", want.generation))
    elif not present:
        steps.append(Step("missing", want.generation))
    elif seen.spec_gen < want.spec_gen:
        steps.append(Step("update", want.spec_gen))
    return tuple(steps)


def reached(want: Record, seen: Reported, done: tuple[Step, ...],
            failed: Step | None = None) -> Reported:
    """What to report after carrying out ``done``. A failed update counts as done: it is
    settled, not retried, as a failed operation is in LXD. A failed rename leaves the
    host's name, which the report says (apply then gives the record its old name back)."""
    kinds = {step.kind for step in done}
    if failed is not None and failed.kind == "update":
        kinds.add("update")
    created = seen.created or "create" in kinds
    name = want.name if kinds & {"rename", "create"} else local_name(want, seen)
    spec = want.spec_gen if kinds & {"create", "update"} else seen.spec_gen
    return Reported(created, "" if name == want.name else name, spec)


def instance_converged(want: Record, seen: Reported) -> bool:
    """Whether the last report covers the record's existence, name and spec."""
    return (seen.created and local_name(want, seen) == want.name
            and seen.spec_gen >= want.spec_gen)
