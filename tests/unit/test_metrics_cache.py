"""The scrape cache: scrapes never wait on each other, and ages stay bounded
(cluster/api/metrics/cache.py)."""

from __future__ import annotations

import asyncio

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from cluster.api.metrics.cache import ScrapeCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Collector:
    """Counts collections; each one waits for ``gate`` when it is given."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> list[Metric]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        family = GaugeMetricFamily("corral_collections", "n")
        family.add_metric([], self.calls)
        return [family]


def _value(body: bytes) -> float:
    return float(body.decode().strip().splitlines()[-1].split()[-1])


async def test_concurrent_scrapes_share_one_collection() -> None:
    collector = Collector()
    collector.gate = asyncio.Event()
    cache = ScrapeCache(collector, clock=Clock())
    scrapes = [asyncio.create_task(cache.get()) for _ in range(50)]
    await asyncio.sleep(0.01)
    collector.gate.set()
    results = await asyncio.gather(*scrapes)
    assert collector.calls == 1
    assert {_value(r.rendered(False)) for r in results} == {1.0}


async def test_a_stale_collection_is_served_at_once_while_a_refresh_runs() -> None:
    clock, collector = Clock(), Collector()
    cache = ScrapeCache(collector, fresh_for=5, max_age=20, clock=clock)
    await cache.get()
    clock.now += 10  # stale, within the bound
    collector.gate = asyncio.Event()  # the refresh hangs
    served = await asyncio.wait_for(cache.get(), 1.0)
    assert _value(served.rendered(False)) == 1.0 and collector.calls == 2
    again = await asyncio.wait_for(cache.get(), 1.0)  # no second refresh while one runs
    assert again is served and collector.calls == 2
    collector.gate.set()
    await asyncio.sleep(0.05)
    assert _value((await cache.get()).rendered(False)) == 2.0


async def test_too_old_waits_for_the_refresh_but_not_past_the_limit() -> None:
    clock, collector = Clock(), Collector()
    cache = ScrapeCache(collector, fresh_for=5, max_age=20, wait_limit=0.2, clock=clock)
    await cache.get()
    clock.now += 60
    fresh = await cache.get()  # waits for the new one, which comes at once
    assert _value(fresh.rendered(False)) == 2.0
    clock.now += 60
    collector.gate = asyncio.Event()  # a stuck collector
    old = await asyncio.wait_for(cache.get(), 1.0)
    assert old is fresh  # the older collection, after wait_limit
    await cache.close()


async def test_first_scrape_with_a_stuck_collector_answers_empty() -> None:
    collector = Collector()
    collector.gate = asyncio.Event()
    cache = ScrapeCache(collector, wait_limit=0.1, clock=Clock())
    got = await asyncio.wait_for(cache.get(), 1.0)
    assert list(got.families) == [] and got.rendered(False) == b""
    await cache.close()


async def test_a_failing_collection_keeps_the_last_one() -> None:
    clock = Clock()
    calls = 0

    async def collect() -> list[Metric]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError("cgroup gone")
        return [GaugeMetricFamily("corral_ok", "ok", value=1)]

    cache = ScrapeCache(collect, clock=clock)
    first = await cache.get()
    clock.now += 60
    assert await cache.get() is first
