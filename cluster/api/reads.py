"""Reads of many records in short holds of the replica lock.

Apply runs in pysyncobj's tick thread under the replica lock, and the leader's
heartbeats go out from the same thread: a reader that holds the lock while it renders
10,000 instances (about 100 ms here) keeps every command and heartbeat waiting that
long, against election timeouts of 0.6-1 s. So a long read takes the keys in one
short hold and renders them ``CHUNK`` at a time, letting apply in between (issue 13,
finding 7). Each record is rendered whole within one hold, so none is ever torn, and
no dict is iterated while apply changes it; a list is therefore not one point-in-time
snapshot (LXD's lists are not either), but every record in it is one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

from cluster.state.model import State
from cluster.state.store import Store

CHUNK = 100  # records rendered per hold: about 1 ms of apply's wait at most
K = TypeVar("K")
T = TypeVar("T")


def instance_names(store: Store) -> list[str]:
    """The names of every instance (a copy of the keys: microseconds even at 10,000)."""
    with store.read() as state:
        return list(state.instances)


async def render_each(store: Store, keys: Sequence[K], render: Callable[[State, K], T | None],
                      chunk: int = CHUNK) -> list[T]:
    """``render(state, key)`` for every key, ``chunk`` keys per hold of the lock, with
    the event loop (and apply) let in between; keys rendered as None are left out
    (a record deleted meanwhile)."""
    rendered: list[T] = []
    for start in range(0, len(keys), chunk):
        if start:
            await asyncio.sleep(0)
        with store.read() as state:
            for key in keys[start:start + chunk]:
                value = render(state, key)
                if value is not None:
                    rendered.append(value)
    return rendered
