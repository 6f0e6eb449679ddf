"""until_replica: a member waits briefly for its replica to catch up with a peer's commit."""

from __future__ import annotations

import asyncio
import time

from cluster.api.handlers.common import until_replica
from cluster.api.response import ApiError


def test_it_returns_as_soon_as_the_replica_shows_the_change() -> None:
    calls: list[int] = []

    def ready() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise ApiError(404, "Instance not found")  # not applied here yet
        return len(calls) >= 4

    started = time.monotonic()
    asyncio.run(until_replica(ready, timeout=5.0))
    assert len(calls) == 4 and time.monotonic() - started < 1.0


def test_it_gives_up_after_its_timeout_and_leaves_the_refusal_to_the_caller() -> None:
    started = time.monotonic()
    asyncio.run(until_replica(lambda: False, timeout=0.1))
    assert 0.1 <= time.monotonic() - started < 1.0
