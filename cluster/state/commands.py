"""The replicated command envelope and the result of applying one.

A command carries everything apply needs that is not deterministic: its
unique id, the wall-clock time, and any generated values (MAC addresses,
instance uids). Replicas then compute identical states.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

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
    """A new command with a fresh id and the current time (never called inside apply)."""
    return Command(id=uuid.uuid4().hex, type=type_, args=args, time=time.time())


def ok(value: Any = None) -> Result:
    return Result(True, value)


def fail(code: int, error: str) -> Result:
    return Result(False, None, error, code)
