"""The Raft store's Prometheus families (cluster/state/raft_metrics.py): the point-in-time
view as families, proposals counted by outcome, the journal's fsyncs timed, and real
RaftStores on loopback (one member, three members, a member without its peers) whose
families say what Raft did, rendered through prometheus_client as Prometheus reads them."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from cluster.state.commands import Command, command
from cluster.state.errors import NoQuorum, OutcomeUnknown
from cluster.state.journal import DurableJournal
from cluster.state.raft import RaftStore
from cluster.state.raft_metrics import ROLES, RaftMetrics, RaftView, view_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(families: Iterable[Metric]) -> Samples:
    """Every sample by (sample name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in families for s in family.samples}


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _view(role: str = "leader", **changes: object) -> RaftView:
    values: dict[str, object] = dict(role=role, has_leader=True, term=3, commit_index=12,
                                     applied_index=11, voters=3, applied_commands=40)
    values.update(changes)
    return RaftView(**values)  # type: ignore[arg-type]


@given(st.sampled_from(ROLES))
def test_exactly_the_current_role_is_one(role: str) -> None:
    samples = _samples(view_families(_view(role)))
    assert {name: _value(samples, "corral_raft_role", role=name) for name in ROLES} == \
        {name: 1.0 if name == role else 0.0 for name in ROLES}
    assert _value(samples, "corral_raft_leader") == (1.0 if role == "leader" else 0.0)


def test_a_view_becomes_gauges_and_the_applied_counter() -> None:
    families = {f.name: f for f in view_families(_view("follower", has_leader=False))}
    samples = _samples(families.values())
    assert _value(samples, "corral_raft_has_leader") == 0.0
    assert _value(samples, "corral_raft_term") == 3.0
    assert _value(samples, "corral_raft_commit_index") == 12.0
    assert _value(samples, "corral_raft_applied_index") == 11.0
    assert _value(samples, "corral_raft_members") == 3.0
    assert _value(samples, "corral_raft_proposals_applied_total") == 40.0
    assert families["corral_raft_proposals_applied"].type == "counter"
    assert {f.type for n, f in families.items() if n != "corral_raft_proposals_applied"} \
        == {"gauge"}
    assert all(f.documentation for f in families.values())


def test_proposals_are_counted_by_outcome() -> None:
    metrics = RaftMetrics()
    for outcome in (True, True, False, None):
        metrics.answered(metrics.proposed(), outcome)
    pending = metrics.proposed()  # still waiting for its answer
    samples = _samples(metrics.collect(_view()))
    assert _value(samples, "corral_raft_proposals_committed_total") == 2.0
    assert _value(samples, "corral_raft_commit_latency_seconds_count") == 2.0
    assert _value(samples, "corral_raft_proposals_failed_total") == 1.0
    assert _value(samples, "corral_raft_proposals_pending") == 1.0
    metrics.answered(pending, True)
    assert _value(_samples(metrics.collect(_view())), "corral_raft_proposals_pending") == 0.0


def test_two_stores_metrics_live_apart() -> None:
    """Each store owns its metric objects: no default registry that a second one of the
    same name would be refused by, no count leaking from one to the other."""
    first, second = RaftMetrics(), RaftMetrics()
    first.leader_changes.inc()
    assert _value(_samples(first.collect(_view())), "corral_raft_leader_changes_seen_total") == 1.0
    assert _value(_samples(second.collect(_view())),
                  "corral_raft_leader_changes_seen_total") == 0.0


def test_the_journal_times_each_group_fsync_and_only_those(tmp_path: Path) -> None:
    fsyncs: list[float] = []
    journal = DurableJournal(str(tmp_path / "journal"), on_fsync=fsyncs.append)
    try:
        for index in range(1, 4):
            journal.add(b"command", index, 1)
        assert journal.sync() and len(fsyncs) == 1 and fsyncs[0] >= 0.0
        assert not journal.sync() and len(fsyncs) == 1  # nothing appended: no fsync
    finally:
        journal._destroy()


# --- real stores on loopback ---------------------------------------------------------


def _addresses(count: int) -> list[str]:
    found = []
    for _ in range(count):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            found.append(f"127.0.0.1:{sock.getsockname()[1]}")
    return found


def _stores(addresses: list[str], root: Path) -> list[RaftStore]:
    return [RaftStore(address, [a for a in addresses if a != address], root / f"m{index}",
                      "test") for index, address in enumerate(addresses)]


async def _until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


class _StoreCollector:
    """What the API does with a store's families (less the ``member`` label)."""

    def __init__(self, store: RaftStore) -> None:
        self._store = store

    def collect(self) -> list[Metric]:
        return self._store.collect_metrics()


def _exposed(store: RaftStore) -> tuple[str, Samples]:
    """The store's families as Prometheus reads them: the text and its samples parsed."""
    registry = CollectorRegistry()
    registry.register(_StoreCollector(store))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return text, _samples(text_string_to_metric_families(text))


def _bootstrap() -> Command:
    capacity = {"cpu": 64, "memory": 2.0**40, "disk": 2.0**40}
    return command("cluster.bootstrap", member={"name": "m1", "capacity": capacity},
                   pool={"name": "default", "driver": "dir"}, network={"name": "br0"})


def test_a_lone_leader_reports_its_commits_fsyncs_and_dumps(tmp_path: Path) -> None:
    async def scenario() -> None:
        (store,) = _stores(_addresses(1), tmp_path)
        await store.start()
        try:
            await store.submit(_bootstrap())
            await asyncio.gather(*(store.submit(command("profile.create", name=f"p{i}"))
                                   for i in range(20)))
            for i in range(5):
                await store.submit(command("profile.create", name=f"q{i}"))
            submits = 1 + 20 + 5
            sync = store._require()
            sync.forceLogCompaction()  # a dump, written by a forked child
            await _until(lambda: _value(_samples(store.collect_metrics()),
                                        "corral_raft_snapshot_duration_seconds_count") >= 1)

            text, samples = _exposed(store)
            assert _value(samples, "corral_raft_leader") == 1.0
            assert _value(samples, "corral_raft_has_leader") == 1.0
            assert _value(samples, "corral_raft_role", role="leader") == 1.0
            assert _value(samples, "corral_raft_role", role="follower") == 0.0
            assert _value(samples, "corral_raft_members") == 1.0
            assert _value(samples, "corral_raft_term") >= 1.0
            assert _value(samples, "corral_raft_commit_index") >= 3.0  # no-op + entries
            assert _value(samples, "corral_raft_applied_index") == store.applied_index()
            assert _value(samples, "corral_raft_leader_changes_seen_total") == 1.0
            assert _value(samples, "corral_raft_proposals_committed_total") == submits
            assert _value(samples, "corral_raft_commit_latency_seconds_count") == submits
            assert _value(samples, "corral_raft_commit_latency_seconds_bucket",
                          le="+Inf") == submits
            assert _value(samples, "corral_raft_commit_latency_seconds_sum") > 0.0
            assert _value(samples, "corral_raft_proposals_applied_total") == submits
            assert _value(samples, "corral_raft_proposals_pending") == 0.0
            assert _value(samples, "corral_raft_proposals_failed_total") == 0.0
            assert _value(samples, "corral_raft_wal_fsync_duration_seconds_count") > 0.0
            for name, kind in [("corral_raft_leader", "gauge"),
                               ("corral_raft_has_leader", "gauge"),
                               ("corral_raft_role", "gauge"),
                               ("corral_raft_term", "gauge"),
                               ("corral_raft_commit_index", "gauge"),
                               ("corral_raft_applied_index", "gauge"),
                               ("corral_raft_members", "gauge"),
                               ("corral_raft_leader_changes_seen", "counter"),
                               ("corral_raft_proposals_committed", "counter"),
                               ("corral_raft_proposals_applied", "counter"),
                               ("corral_raft_proposals_pending", "gauge"),
                               ("corral_raft_proposals_failed", "counter"),
                               ("corral_raft_commit_latency_seconds", "histogram"),
                               ("corral_raft_snapshot_duration_seconds", "histogram"),
                               ("corral_raft_wal_fsync_duration_seconds", "histogram")]:
                exposed = f"{name}_total" if kind == "counter" else name  # text format 0.0.4
                assert f"# TYPE {exposed} {kind}\n" in text
                assert f"# HELP {exposed} " in text
            assert "_created" not in text  # etcd has none; each would be a family of its own
            for exposed in ("corral_raft_leader_changes_seen_total 1.0",
                            "corral_raft_proposals_failed_total 0.0",
                            'corral_raft_role{role="leader"} 1.0'):
                assert exposed + "\n" in text
        finally:
            await store.close()
        samples = _samples(store.collect_metrics())  # stopped: the counts stay
        assert _value(samples, "corral_raft_role", role="stopped") == 1.0
        assert _value(samples, "corral_raft_leader") == 0.0
        assert _value(samples, "corral_raft_has_leader") == 0.0
        assert _value(samples, "corral_raft_proposals_committed_total") == submits

    asyncio.run(scenario())


def test_three_members_agree_on_one_leader_and_count_a_failover(tmp_path: Path) -> None:
    async def scenario() -> None:
        stores = _stores(_addresses(3), tmp_path)
        running = list(stores)
        try:
            await asyncio.gather(*(store.start() for store in stores))
            await _until(lambda: len({s.leader() for s in stores}) == 1)
            leader = next(s for s in stores if s.address == stores[0].leader())
            follower = next(s for s in stores if s is not leader)
            await follower.submit(_bootstrap())
            await _until(lambda: all(s.applied_index() == leader.commit_index() for s in stores))
            views = [_samples(s.collect_metrics()) for s in stores]
            assert [_value(v, "corral_raft_leader") for v in views].count(1.0) == 1
            for store, samples in zip(stores, views, strict=True):
                role = "leader" if store is leader else "follower"
                assert _value(samples, "corral_raft_role", role=role) == 1.0
                assert _value(samples, "corral_raft_has_leader") == 1.0
                assert _value(samples, "corral_raft_members") == 3.0
                assert _value(samples, "corral_raft_leader_changes_seen_total") == 1.0
                assert _value(samples, "corral_raft_proposals_applied_total") == 1.0
            assert len({_value(v, "corral_raft_term") for v in views}) == 1
            assert _value(_samples(follower.collect_metrics()),
                          "corral_raft_commit_latency_seconds_count") == 1.0
            assert _value(_samples(leader.collect_metrics()),
                          "corral_raft_commit_latency_seconds_count") == 0.0

            await leader.close()  # the others elect a new leader: a second change seen
            running.remove(leader)
            await _until(lambda: all(s.leader() not in (None, leader.address)
                                     for s in running))
            for store in running:
                samples = _samples(store.collect_metrics())
                assert _value(samples, "corral_raft_leader_changes_seen_total") == 2.0
                assert _value(samples, "corral_raft_has_leader") == 1.0
        finally:
            await asyncio.gather(*(store.close() for store in running))

    asyncio.run(scenario())


def test_a_member_without_its_peers_counts_failed_proposals(tmp_path: Path) -> None:
    """Its partners never start: no leader, and a submit fails (timed out, or refused
    for want of a quorum) without a commit latency to record."""
    async def scenario() -> None:
        store = _stores(_addresses(3), tmp_path)[0]
        await store.start(ready_timeout=0.1)
        try:
            with pytest.raises((OutcomeUnknown, NoQuorum)):
                await store.submit(command("profile.create", name="lost"), timeout=0.3)
            samples = _samples(store.collect_metrics())
            assert _value(samples, "corral_raft_has_leader") == 0.0
            assert _value(samples, "corral_raft_leader") == 0.0
            assert _value(samples, "corral_raft_members") == 3.0
            assert _value(samples, "corral_raft_proposals_failed_total") >= 1.0
            assert _value(samples, "corral_raft_proposals_pending") == 0.0
            assert _value(samples, "corral_raft_proposals_committed_total") == 0.0
            assert _value(samples, "corral_raft_commit_latency_seconds_count") == 0.0
            assert _value(samples, "corral_raft_leader_changes_seen_total") == 0.0
        finally:
            await store.close()

    asyncio.run(scenario())
