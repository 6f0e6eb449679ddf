"""Background operations in LXD's shape (local to the member that runs them).

An operation wraps one coroutine. Its status moves Running -> Success,
Failure or Cancelled; every change is published as an ``operation`` event.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from cluster.state.clock import wall_time
from cluster.state.errors import OutcomeUnknown
from corral_shared.codes import CODES as STATUS_CODES

log = logging.getLogger(__name__)

KEEP_FINISHED_SECONDS = 300.0


def rfc3339(ts: float) -> str:
    if not ts:
        return "1970-01-01T00:00:00Z"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Operation:
    def __init__(self, description: str, class_: str, resources: dict[str, list[str]],
                 location: str, cancellable: bool) -> None:
        self.id = str(uuid.uuid4())
        self.description = description
        self.class_ = class_
        self.resources = resources
        self.location = location
        self.cancellable = cancellable
        self.created_at = self.updated_at = wall_time()
        self.status = "Running"
        self.err = ""
        self.metadata: dict[str, Any] = {}
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.secrets: dict[str, str] = {}
        # For class "websocket": serves GET /1.0/operations/<id>/websocket for one fd.
        self.websocket: Callable[[web.Request, str], Awaitable[web.StreamResponse]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "class": self.class_, "description": self.description,
            "created_at": rfc3339(self.created_at), "updated_at": rfc3339(self.updated_at),
            "status": self.status, "status_code": STATUS_CODES[self.status],
            "resources": self.resources, "metadata": self.metadata or None,
            "may_cancel": self.cancellable and not self.done.is_set(), "err": self.err,
            "location": self.location,
        }

    def new_secret(self, fd: str) -> str:
        self.secrets[fd] = secrets.token_hex(32)
        return self.secrets[fd]


Runner = Callable[[Operation], Awaitable[dict[str, Any] | None]]


class Operations:
    def __init__(self, location: str, publish: Callable[[Operation], None]) -> None:
        self._ops: dict[str, Operation] = {}
        self.location = location
        self._publish = publish
        # Starts the operation that settles a command whose outcome is unknown
        # (cluster/api/outcomes.py); set by the daemon, which knows the store.
        self.follow_unknown: Callable[[OutcomeUnknown, str], Operation] | None = None

    def start(self, description: str, run: Runner, resources: dict[str, list[str]] | None = None,
              class_: str = "task", cancellable: bool = False,
              prepare: Callable[[Operation], None] | None = None) -> Operation:
        op = Operation(description, class_, resources or {}, self.location, cancellable)
        if prepare is not None:
            prepare(op)
        self._ops[op.id] = op
        self._prune()
        op.task = asyncio.create_task(self._run(op, run))
        self._publish(op)
        return op

    async def _run(self, op: Operation, run: Runner) -> None:
        try:
            result = await run(op)
            if result:
                op.metadata.update(result)
            op.status = "Success"
        except asyncio.CancelledError:
            op.status, op.err = "Cancelled", "Operation cancelled"
        except OutcomeUnknown as exc:
            op.status, op.err = "Failure", self.explain_unknown(exc, op.description)
        except Exception as exc:  # noqa: BLE001 - an operation reports, it never crashes the loop
            op.status, op.err = "Failure", str(exc) or type(exc).__name__
            log.info("operation %s (%s) failed: %s", op.id, op.description, op.err)
        op.updated_at = wall_time()
        op.done.set()
        self._publish(op)

    def explain_unknown(self, exc: OutcomeUnknown, what: str) -> str:
        """What to tell a client whose change may or may not have happened: that, and the
        operation that will settle it."""
        if self.follow_unknown is None:
            return f"{what}: {exc}"
        settling = self.follow_unknown(exc, what)
        return f"{what}: {exc}. Follow /1.0/operations/{settling.id} to learn whether it did"

    def update(self, op: Operation, **metadata: Any) -> None:
        op.metadata.update(metadata)
        op.updated_at = wall_time()
        self._publish(op)

    def get(self, op_id: str) -> Operation | None:
        return self._ops.get(op_id)

    def all(self) -> list[Operation]:
        return list(self._ops.values())

    def cancel(self, op: Operation) -> bool:
        if not op.cancellable or op.done.is_set() or op.task is None:
            return False
        op.status = "Cancelling"
        op.task.cancel()
        return True

    def _prune(self) -> None:
        cutoff = wall_time() - KEEP_FINISHED_SECONDS
        for op_id in [i for i, o in self._ops.items() if o.done.is_set() and o.updated_at < cutoff]:
            del self._ops[op_id]

    async def close(self) -> None:
        tasks = [o.task for o in self._ops.values() if o.task and not o.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
