"""The one pure, deterministic, non-raising ``apply(state, command)``.

It dispatches on a versioned command table. Unknown command types and newer
command versions are refused with a result (never an exception): a replica
that does not understand a command must not block the log.
"""

from __future__ import annotations

from collections.abc import Callable

from cluster.state import apply_instances, apply_members, apply_misc, apply_moves, apply_trust
from cluster.state.commands import COMMAND_VERSION, Command, Result, fail
from cluster.state.model import RECENT_COMMANDS, State

Handler = Callable[[State, Command], Result]

HANDLERS: dict[str, Handler] = {**apply_instances.HANDLERS, **apply_misc.HANDLERS,
                                **apply_trust.HANDLERS, **apply_members.HANDLERS,
                                **apply_moves.HANDLERS}


def apply(state: State, cmd: Command) -> Result:
    """Apply ``cmd`` once; a repeated command id returns the first result."""
    if cmd.id in state.recent:
        return state.recent[cmd.id]  # type: ignore[no-any-return]
    result = _dispatch(state, cmd)
    state.recent[cmd.id] = result
    while len(state.recent) > RECENT_COMMANDS:
        state.recent.popitem(last=False)
    state.index += 1
    return result


def _dispatch(state: State, cmd: Command) -> Result:
    if cmd.ver > COMMAND_VERSION:
        return fail(400, f"Command version {cmd.ver} is newer than this member understands")
    handler = HANDLERS.get(cmd.type)
    if handler is None:
        return fail(400, f"Unknown command type {cmd.type!r}")
    try:
        return handler(state, cmd)
    except Exception as exc:  # noqa: BLE001 - apply must never raise (it would block the log)
        return fail(500, f"Internal error applying {cmd.type}: {exc!r}")
