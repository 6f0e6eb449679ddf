"""The no-quorum judgement (cluster/state/quorum.py), as a pure function and on three real
RaftStores on loopback: a survivor of two lost voters refuses writes at once, with the
count, while a normal leader failover refuses none."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.state.commands import command
from cluster.state.errors import NoQuorum, OutcomeUnknown, Unavailable
from cluster.state.quorum import leader_known, majority, reachability
from cluster.state.raft import QUORUM_GRACE, RaftStore
from tests.unit.test_raft_cluster import _cluster, _leader_index, _profiles, _until

PARTNERS = ["a:1", "b:1"]


def test_a_voter_that_heard_no_one_lately_and_knows_no_leader_has_no_quorum() -> None:
    judged = reachability(100.0, True, PARTNERS, {"a:1": 90.0, "b:1": 95.0}, 0.0, False, 2.0)
    assert (judged.reachable, judged.voters, judged.no_quorum) == (1, 3, True)
    assert judged.message() == "cluster has no quorum: 1 of 3 voters reachable"


def test_one_partner_heard_within_the_grace_makes_a_majority_of_three() -> None:
    judged = reachability(100.0, True, PARTNERS, {"a:1": 90.0, "b:1": 98.5}, 0.0, False, 2.0)
    assert (judged.reachable, judged.no_quorum) == (2, False)


def test_a_known_leader_speaks_for_the_quorum_this_member_cannot_see() -> None:
    five = ["a:1", "b:1", "c:1", "d:1"]
    judged = reachability(100.0, True, five, {"a:1": 99.9}, 0.0, True, 2.0)
    assert (judged.reachable, judged.voters, judged.no_quorum) == (2, 5, False)


def test_voters_never_heard_count_from_the_start_so_a_new_member_gets_the_grace() -> None:
    assert not reachability(101.0, True, PARTNERS, {}, 100.0, False, 2.0).no_quorum
    assert reachability(103.0, True, PARTNERS, {}, 100.0, False, 2.0).no_quorum


def test_a_non_voter_counts_only_the_voters() -> None:
    judged = reachability(100.0, False, ["a:1", "b:1", "c:1"], {"a:1": 99.0}, 0.0, False, 2.0)
    assert (judged.reachable, judged.voters, judged.no_quorum) == (1, 3, True)


def test_a_lone_voter_always_has_its_quorum() -> None:
    assert not reachability(1e6, True, [], {}, 0.0, False, 2.0).no_quorum


@given(st.integers(0, 8), st.lists(st.floats(0, 10), max_size=8), st.booleans(),
       st.floats(0.1, 5))
def test_refusal_is_exactly_no_leader_and_fewer_than_a_majority_heard(
        partners: int, ages: list[float], leader_known: bool, grace: float) -> None:
    names = [f"n{i}:1" for i in range(partners)]
    heard = {name: 100.0 - age for name, age in zip(names, ages, strict=False)}
    judged = reachability(100.0, True, names, heard, 100.0, leader_known, grace)
    recent = 1 + sum(1 for n in names if 100.0 - heard.get(n, 100.0) <= grace)
    assert judged.voters == partners + 1 and judged.reachable == recent
    assert judged.no_quorum == (not leader_known and recent < majority(partners + 1))
    assert judged.reachable <= judged.voters


def test_a_survivor_of_two_lost_voters_refuses_writes_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _cluster(tmp_path) as (_, stores):
            await _until(lambda: len({s.leader() for s in stores}) == 1)
            survivor = stores[(_leader_index(stores) + 1) % 3]
            for store in stores:
                if store is not survivor:
                    await store.close()
            await _until(lambda: _no_quorum(survivor),
                         timeout=QUORUM_GRACE + 3)
            started = time.monotonic()
            with pytest.raises(NoQuorum) as refused:
                await survivor.submit(command("profile.create", name="refused"))
            assert time.monotonic() - started < 0.5
            assert str(refused.value.message) == "cluster has no quorum: 1 of 3 voters reachable"
            assert isinstance(refused.value, Unavailable)
            assert not isinstance(refused.value, OutcomeUnknown)  # known: not applied
            assert "refused" not in _profiles(survivor)
            assert survivor.raft_status()["no_quorum"] is True

    asyncio.run(scenario())


def test_a_leader_failover_refuses_no_write(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _cluster(tmp_path) as (_, stores):
            await _until(lambda: len({s.leader() for s in stores}) == 1)
            leader = _leader_index(stores)
            rest = [s for i, s in enumerate(stores) if i != leader]
            await stores[leader].close()
            seen: list[bool] = []
            deadline = time.monotonic() + QUORUM_GRACE + 3
            while time.monotonic() < deadline:  # across the whole election and after
                seen += [_no_quorum(s) for s in rest]
                await asyncio.sleep(0.05)
            assert not any(seen)
            await rest[0].submit(command("profile.create", name="after-failover"))
            await _until(lambda: "after-failover" in _profiles(rest[1]), timeout=10)

    asyncio.run(scenario())


def _no_quorum(store: RaftStore) -> bool:
    judged = store.reachability()
    assert judged is not None, "Raft is not running"
    return judged.no_quorum


def test_a_leader_heard_within_the_grace_is_known_while_a_pre_vote_round_runs() -> None:
    """The leader died 0.8 s ago: the election timeout has passed and a pre-vote round
    cleared pysyncobj's leader, but the other follower's answer has not come yet (it was
    never heard while the leader lived). Two of three voters are up: no refusal."""
    now, killed_at = 100.0, 99.2
    assert leader_known(False, killed_at, now, QUORUM_GRACE)
    judged = reachability(now, True, ["b", "c"], {"b": killed_at, "c": 10.0}, 0.0,
                          leader_known(False, killed_at, now, QUORUM_GRACE), QUORUM_GRACE)
    assert not judged.no_quorum
    later = killed_at + QUORUM_GRACE + 0.1  # nobody answered for the whole grace: refused
    assert not leader_known(False, killed_at, later, QUORUM_GRACE)
    assert reachability(later, True, ["b", "c"], {"b": killed_at, "c": 10.0}, 0.0,
                        False, QUORUM_GRACE).no_quorum
    assert leader_known(True, None, now, QUORUM_GRACE)
    assert not leader_known(False, None, now, QUORUM_GRACE)
