"""Scrapes served from a collection refreshed in the background, never behind a lock.

LXD guards its metrics cache with a lock and answers a concurrent scrape with HTTP 423
"Failed to obtain lock metricsGet" (canonical/lxd#15478, lxc/incus#2250). Here every
scrape gets the newest collection at once while it is younger than ``max_age``; one
older than ``fresh_for`` starts a refresh in the background that concurrent scrapes
share (one collection at a time, however many scrapers). Only a scrape with nothing
young enough to give waits for the refresh, and at most ``wait_limit`` seconds: then it
gets the older collection, or an empty one, rather than hang with a stuck collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from cluster.api.metrics.render import render

log = logging.getLogger(__name__)
FRESH_FOR = 5.0  # s: a collection younger than this is served without refreshing
MAX_AGE = 20.0  # s: the oldest collection served without waiting for a new one
WAIT_LIMIT = 5.0  # s: the longest a scrape waits for a refresh


@dataclass
class Collection:
    families: Sequence[Metric]
    taken_at: float
    _rendered: dict[bool, bytes] = field(default_factory=dict)

    def rendered(self, openmetrics: bool) -> bytes:
        """The exposition, rendered once per format (scrapes share it)."""
        found = self._rendered.get(openmetrics)
        if found is None:
            found = self._rendered[openmetrics] = render(self.families, openmetrics)
        return found


class ScrapeCache:
    def __init__(self, collect: Callable[[], Awaitable[Sequence[Metric]]],
                 fresh_for: float = FRESH_FOR, max_age: float = MAX_AGE,
                 wait_limit: float = WAIT_LIMIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._collect = collect
        self.fresh_for, self.max_age, self.wait_limit = fresh_for, max_age, wait_limit
        self._clock = clock
        self._newest: Collection | None = None
        self._refresh: asyncio.Task[Collection] | None = None
        self.refreshes = 0
        self.last_duration = 0.0  # s the newest collection took (its own metric)

    async def get(self) -> Collection:
        newest = self._newest
        age = self._clock() - newest.taken_at if newest is not None else float("inf")
        if age < self.fresh_for and newest is not None:
            return newest
        task = self._start_refresh()
        if newest is not None and age < self.max_age:
            return newest
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.wait_limit)
        except Exception as exc:  # noqa: BLE001 - a failed or slow collection still answers
            log.warning("metrics collection not ready (%s): serving %s", exc or "timeout",
                        "an older one" if newest is not None else "none")
            return newest if newest is not None else Collection([], self._clock())

    def _start_refresh(self) -> asyncio.Task[Collection]:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._run())
        return self._refresh

    async def _run(self) -> Collection:
        started = self._clock()
        collection = Collection(list(await self._collect()), started)
        # The common format, rendered once and off the event loop.
        await asyncio.to_thread(collection.rendered, False)
        self._newest = collection
        self.refreshes += 1
        self.last_duration = self._clock() - started
        return collection

    async def close(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refresh


def cache_families(cache: ScrapeCache) -> list[Metric]:
    """How the cache itself fares: how long collecting took, and how often it ran."""
    return [
        GaugeMetricFamily("corral_metrics_collection_seconds",
                          "Time the newest collection of instance metrics took.",
                          value=cache.last_duration),
        CounterMetricFamily("corral_metrics_collections",
                            "Collections of instance metrics made for scrapes.",
                            value=cache.refreshes),
    ]
