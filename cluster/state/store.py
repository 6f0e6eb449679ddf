"""The one interface the rest of corral sees of the replicated state.

``submit`` is linearizable (returns after commit with apply's value or raises
its typed error); ``read`` is a consistent read of the local replica;
``subscribe`` pushes every applied command to the caller's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from cluster.state.commands import Command, Result
from cluster.state.model import State


@dataclass(frozen=True)
class Change:
    command: Command
    result: Result


class Store(Protocol):
    async def submit(self, cmd: Command, timeout: float = 10.0) -> Any: ...

    def read(self) -> AbstractContextManager[State]: ...

    def subscribe(self) -> asyncio.Queue[Change]: ...

    def unsubscribe(self, queue: asyncio.Queue[Change]) -> None: ...

    def leader(self) -> str | None: ...

    def commit_index(self) -> int: ...

    def applied_index(self) -> int: ...

    async def wait_applied(self, index: int, timeout: float) -> bool: ...

    async def read_barrier(self, timeout: float) -> None: ...

    def members(self) -> list[str]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def iter_queue(queue: asyncio.Queue[Change]) -> Iterator[Change]:
    """Drain what is already queued without waiting."""
    while not queue.empty():
        yield queue.get_nowait()
