"""The event hub behind ``/1.0/events``: lifecycle, operation and logging events."""

from __future__ import annotations

import asyncio
from typing import Any

from cluster.api.op_registry import rfc3339
from cluster.state.clock import wall_time

EVENT_TYPES = ("lifecycle", "operation", "logging")


class EventHub:
    def __init__(self, location: str) -> None:
        self.location = location
        self._subscribers: list[tuple[set[str], asyncio.Queue[dict[str, Any]]]] = []

    def subscribe(self, types: set[str]) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10000)
        self._subscribers.append((types, queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers = [(t, q) for t, q in self._subscribers if q is not queue]

    def publish(self, type_: str, metadata: dict[str, Any]) -> None:
        if not self._subscribers:
            return
        event = {"type": type_, "timestamp": rfc3339(wall_time()), "metadata": metadata,
                 "location": self.location, "project": "default"}
        for types, queue in self._subscribers:
            if type_ in types and not queue.full():
                queue.put_nowait(event)

    def lifecycle(self, action: str, source: str, **context: Any) -> None:
        self.publish("lifecycle", {"action": action, "source": source, "context": context,
                                   "requestor": None})
