"""The replicated command envelope and the result of applying one.

A command carries everything apply needs that is not deterministic: its
unique id, the wall-clock time, and any generated values (MAC addresses,
instance uids). Replicas then compute identical states.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from cluster.state.clock import wall_time
from cluster.state.slotted import slotted

COMMAND_VERSION = 1


@dataclass(frozen=True)
class Command:
    id: str
    type: str
    args: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0
    ver: int = COMMAND_VERSION


@slotted
@dataclass(frozen=True, slots=True)
class Result:
    """What apply returned. Slotted: ``State.recent`` keeps one for every placement of
    the recent plans (cluster/state/slotted.py)."""

    ok: bool
    value: Any = None
    error: str = ""
    code: int = 200


def command(type_: str, **args: Any) -> Command:
    """A new command with a fresh id and the current time (never called inside apply).
    The time is this daemon's wall clock (with the test-only offset of ``clock``): apply
    uses it for records and expiries, never to judge liveness."""
    return Command(id=uuid.uuid4().hex, type=type_, args=args, time=wall_time())


def ok(value: Any = None) -> Result:
    return Result(True, value)


def fail(code: int, error: str) -> Result:
    return Result(False, None, error, code)
