"""Telling a client plainly that its change may or may not have happened.

When every try of a command timed out or met a leader change (``OutcomeUnknown``), the
client gets a 503 that says so and names an operation, and that operation settles the
question: it waits for a quorum, then reports Success (the change took effect), or
Failure with apply's refusal, or Failure "not applied: safe to retry". A client that
cannot wait can still look at the resource; one that retries blindly risks applying a
different command twice, which this spares it (etcd's clients get the same answer from
a revision check; LXD has no such case: its database is local).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from cluster.api.op_registry import Operation, Operations
from cluster.state.apply import RETRY_HORIZON
from cluster.state.clock import wall_time
from cluster.state.commands import Result
from cluster.state.errors import OutcomeUnknown, Unavailable, error_for

# The store answers for a command id only while apply keeps its result (RETRY_HORIZON
# seconds of command time); stop well before, and say the outcome stays unknown.
SETTLE_SECONDS = RETRY_HORIZON / 2
BARRIER_SECONDS = 5.0
PAUSE_SECONDS = 1.0

Settle = Callable[[str, float], Awaitable[Result | None]]


def follow(ops: Operations, settle: Settle, unknown: OutcomeUnknown, what: str) -> Operation:
    """Start the operation that settles ``unknown``; ``what`` names the request."""

    async def run(op: Operation) -> dict[str, Any]:
        result = await settled(settle, unknown, lambda state: ops.update(op, state=state))
        if result is None:
            raise Unavailable(f"{what} was not applied: it is safe to retry")
        if not result.ok:
            raise error_for(result.code, f"{what} was refused: {result.error}")
        return {"state": "applied", "applied": True, "command": unknown.command_id}

    return ops.start(f"Settling the outcome of {what}", run,
                     resources={"commands": [unknown.command_id]}, cancellable=True)


async def settled(settle: Settle, unknown: OutcomeUnknown,
                  report: Callable[[str], None]) -> Result | None:
    """The command's result, or None when it never took effect; raises
    ``Unavailable`` when no quorum came back in time to tell."""
    while True:
        try:
            return await settle(unknown.command_id, BARRIER_SECONDS)
        except Unavailable:
            pass
        if wall_time() - unknown.command_time > SETTLE_SECONDS:  # both this daemon's clock
            raise Unavailable(f"The outcome of command {unknown.command_id} is still unknown: "
                              f"no quorum for {SETTLE_SECONDS:g} s; look at the resource itself")
        report("waiting for a quorum")
        await asyncio.sleep(PAUSE_SECONDS)
