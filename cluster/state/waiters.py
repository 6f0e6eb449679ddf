"""Waiting, on the caller's side, for a node agent to carry out what a command asked.

A command that asks an agent for work returns the instance's new ``generation``; the
agent reports ``instance.observed`` once it has reached it. The API's operations and the
leader's controllers both wait for that report, so the waiting lives here, beside the
store, and raises the state's own typed errors (an API handler maps them like any other).
"""

from __future__ import annotations

import asyncio
from typing import Any

from cluster.state.commands import Command
from cluster.state.errors import BadRequest, StateError
from cluster.state.store import Change, Store


class AgentFailed(BadRequest):
    """The agent reported an error for the awaited generation (400, its message)."""


class WaitTimedOut(StateError):
    """No report of the awaited generation in time."""

    code = 504


async def wait_generation(store: Store, queue: asyncio.Queue[Change], uid: str,
                          generation: int, timeout: float) -> None:
    """Return once the agent has reported ``generation`` (or later) for ``uid``.

    ``queue`` must come from ``store.subscribe()`` taken *before* the command that queued
    the work was submitted, so the report cannot slip between the read and the wait.
    Raises ``AgentFailed`` with the agent's error, ``WaitTimedOut`` after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with store.read() as state:
        inst = state.instance_by_uid(uid)
        if inst is not None and inst.observed.generation >= generation:
            error = inst.results.get(generation, "")
            if error:
                raise AgentFailed(error)
            return
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise WaitTimedOut("Timed out waiting for the node agent")
        try:
            change = await asyncio.wait_for(queue.get(), remaining)
        except TimeoutError:
            continue  # the deadline check above raises
        args = change.command.args
        if (change.command.type == "instance.observed" and args.get("uid") == uid
                and int(args.get("generation", 0)) >= generation):
            if args.get("error"):
                raise AgentFailed(str(args["error"]))
            return


async def submit_and_wait(store: Store, cmd: Command, uid: str = "",
                          timeout: float = 600.0) -> dict[str, Any]:
    """Commit ``cmd`` (a refusal raises at once) and wait until the agent has carried out
    the generation it returned, for ``uid`` (or the ``uid`` in its result)."""
    queue = store.subscribe()
    try:
        value: dict[str, Any] = await store.submit(cmd) or {}
        uid = str(value.get("uid") or uid)
        generation = int(value.get("generation", 0))
        if uid and generation:
            await wait_generation(store, queue, uid, generation, timeout)
        return value
    finally:
        store.unsubscribe(queue)
