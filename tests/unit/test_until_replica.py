"""until_replica: a member waits briefly for its replica to catch up with a peer's commit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cluster.api.handlers.common import REPLICA_LAG, until_replica
from cluster.api.response import ApiError
from cluster.transport.peers import APPLIED_HEADER
from tests.unit.served_api import served_api


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


def test_a_peer_ahead_of_this_replica_is_refused_not_served_stale(tmp_path: Path) -> None:
    """A request that says its sender saw index N committed is answered only once this
    replica applied N; after REPLICA_LAG it is a 503, never an answer from older state."""
    with served_api(tmp_path) as served:
        applied = served.store.applied_index()
        status, doc = served.api.call("GET", "/1.0/profiles",
                                      headers={APPLIED_HEADER: str(applied)})
        assert status == 200, doc
        started = time.monotonic()
        status, doc = served.api.call("GET", "/1.0/profiles",
                                      headers={APPLIED_HEADER: str(applied + 1000)})
        assert status == 503 and "not yet" in doc["error"], doc
        assert REPLICA_LAG <= time.monotonic() - started < REPLICA_LAG + 3
