"""The one pure, deterministic, non-raising ``apply(state, command)``.

It dispatches on a versioned command table. Unknown command types and newer
command versions are refused with a result (never an exception): a replica
that does not understand a command must not block the log.
"""

from __future__ import annotations

from collections.abc import Callable

from cluster.state import (
    apply_ha,
    apply_instances,
    apply_intents,
    apply_members,
    apply_misc,
    apply_moves,
    apply_trust,
    digest,
)
from cluster.state.commands import COMMAND_VERSION, Command, Result, fail
from cluster.state.model import RECENT_COMMANDS, State

BARRIER = "read.barrier"
RETRY_HORIZON = 120.0  # seconds: six times RaftStore.submit's budget (SUBMIT_SECONDS)

Handler = Callable[[State, Command], Result]

HANDLERS: dict[str, Handler] = {**apply_instances.HANDLERS, **apply_misc.HANDLERS,
                                **apply_trust.HANDLERS, **apply_members.HANDLERS,
                                **apply_moves.HANDLERS, **apply_intents.HANDLERS,
                                **digest.HANDLERS, **apply_ha.HANDLERS}


def apply(state: State, cmd: Command) -> Result:
    """Apply ``cmd`` once; a repeated command id returns the first result.

    Results are kept for the last ``RECENT_COMMANDS`` commands, and never for less than
    ``RETRY_HORIZON`` seconds (of the commands' own times): a submitter retries a
    command whose outcome it does not know for 20 s, and an operation settles it
    afterwards for up to a minute (``RaftStore.settle``); at thousands of commands per
    second a count alone forgot it first (the retry then applied twice).
    """
    if cmd.type == BARRIER:  # changes nothing, remembers nothing (see RaftStore.read_barrier)
        return Result(True)
    if cmd.id in state.recent:
        return kept_result(state.recent[cmd.id])
    result = _dispatch(state, cmd)
    state.recent[cmd.id] = (cmd.time, result)
    while len(state.recent) > RECENT_COMMANDS:
        oldest = next(iter(state.recent.values()))
        if isinstance(oldest, tuple) and oldest[0] > cmd.time - RETRY_HORIZON:
            break
        state.recent.popitem(last=False)
    state.index += 1
    return result


def kept_result(kept: object) -> Result:
    """A kept result: ``(time, Result)``, or a bare Result in older snapshots."""
    found = kept[1] if isinstance(kept, tuple) else kept
    assert isinstance(found, Result)
    return found


def _dispatch(state: State, cmd: Command) -> Result:
    if cmd.ver > COMMAND_VERSION:
        return fail(400, f"Command version {cmd.ver} is newer than this member understands")
    handler = HANDLERS.get(cmd.type)
    if handler is None:
        return fail(400, f"Unknown command type {cmd.type!r}")
    try:
        refused = apply_intents.fence(state, cmd)  # a deposed leader's controller, a late step
        return refused if refused is not None else handler(state, cmd)
    except Exception as exc:  # noqa: BLE001 - apply must never raise (it would block the log)
        return fail(500, f"Internal error applying {cmd.type}: {exc!r}")
