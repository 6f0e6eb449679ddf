"""An intent (a move, an evacuation, a restore) seen as an LXD operation.

The operation's id is the intent's id and it is rendered from the replica, so any
member answers ``GET``/``wait``/``DELETE /1.0/operations/<id>`` for it, and a client
waiting on it outlives the member that took its request. ``wait`` watches the state
feed; ``DELETE`` commits ``intent.cancel`` (refused once the move is past its switch).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp import web

from cluster.api.context import Context
from cluster.api.op_registry import STATUS_CODES, rfc3339
from cluster.api.response import async_operation, bad_request
from cluster.controllers.move_request import MoveRefused, move_request
from cluster.state.commands import command
from cluster.state.model import Intent
from cluster.state.store import Store

STATUS = {"done": "Success", "failed": "Failure", "cancelled": "Cancelled"}


def render(intent: Intent) -> dict[str, Any]:
    """LXD's operation document of ``intent``."""
    status = STATUS.get(intent.phase, "Cancelling" if intent.cancel else "Running")
    return {
        "id": intent.id, "class": "task",
        "description": str(intent.request.get("description", intent.kind)),
        "created_at": rfc3339(intent.created_at), "updated_at": rfc3339(intent.updated_at),
        "status": status, "status_code": STATUS_CODES[status],
        "resources": intent.request.get("resources") or {},
        "metadata": dict(intent.progress) or None,
        "may_cancel": intent.cancellable and not intent.finished and not intent.cancel,
        "err": "" if status == "Success" else intent.error, "location": intent.member,
    }


def find(store: Store, op_id: str) -> dict[str, Any] | None:
    """The operation document of intent ``op_id`` in this replica, or None."""
    with store.read() as state:
        intent = state.intents.get(op_id)
        return render(intent) if intent is not None else None


def all_rendered(store: Store) -> list[dict[str, Any]]:
    with store.read() as state:
        return [render(i) for i in state.intents.values()]


async def wait(store: Store, op_id: str, timeout: float) -> dict[str, Any] | None:
    """The document once the intent has finished, or after ``timeout`` s (< 0: none)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout < 0 else loop.time() + timeout
    queue = store.subscribe()
    try:
        while True:
            doc = find(store, op_id)
            if doc is None or doc["status"] in STATUS.values():
                return doc
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return doc
            try:
                await asyncio.wait_for(_intent_change(queue, op_id), remaining)
            except TimeoutError:
                return find(store, op_id)
    finally:
        store.unsubscribe(queue)


async def _intent_change(queue: asyncio.Queue[Any], op_id: str) -> None:
    while True:
        change = await queue.get()
        if change.command.type.startswith("intent.") and (
                change.command.args.get("intent") == op_id):
            return


async def cancel(store: Store, op_id: str) -> None:
    """Ask the controller to undo the move (409 once it is past its switch)."""
    await store.submit(command("intent.cancel", intent=op_id))


async def start_intent(ctx: Context, kind: str, request: dict[str, Any],
                       locks: dict[str, str] | None = None) -> web.Response:
    """Commit a new intent for the leader's controllers and answer with its operation."""
    intent_id = str(uuid.uuid4())
    await ctx.store.submit(command("intent.create", intent=intent_id, kind=kind,
                                   request=request, locks=locks or {}, member=ctx.member))
    doc = find(ctx.store, intent_id)
    assert doc is not None  # submit returns once this replica applied it
    return async_operation(doc)


async def start_move(ctx: Context, name: str, target: str, requested: str = "",
                     ) -> web.Response:
    """Validate a move of ``name`` to ``target`` and commit its intent (which locks the
    instance: every other change is refused until the move has finished)."""
    with ctx.store.read() as state:
        try:
            kind, request = move_request(state, name, target, requested=requested)
        except MoveRefused as exc:
            raise bad_request(str(exc)) from exc
    return await start_intent(ctx, kind, request, {name: request["uid"]})
