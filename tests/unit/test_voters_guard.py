"""Raft configuration changes only while the lease holds (cluster/controllers/voters.py).

A member that led its own one-member cluster before joining another still ran the voters
controller for a moment after its store was rebound, with an empty replica: every partner
looked extra and it asked Raft to remove them (seen in CI: a 3-member cluster that then
could not elect a leader after a partition). The store here records the changes asked of
it; the guard, not Raft, is under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cluster.controllers.voters import follow_roles_in_raft
from cluster.state.model import Member, State


class RecordingStore:
    """The part of ``RaftStore`` the voters controller uses, recording each change."""

    def __init__(self, state: State, partners: set[str], loaded: bool = True) -> None:
        self.state, self.partners, self.replica_loaded = state, partners, loaded
        self.address = "10.0.0.1:8444"
        self.changes: list[tuple[str, str]] = []

    @contextmanager
    def read(self) -> Iterator[State]:
        yield self.state

    def raft_partners(self) -> set[str]:
        return set(self.partners)

    async def add_member(self, raft: str, timeout: float) -> None:
        self.changes.append(("add", raft))

    async def remove_member(self, raft: str, timeout: float) -> None:
        self.changes.append(("remove", raft))


def _state(voters: dict[str, str]) -> State:
    state = State()
    for name, raft in voters.items():
        state.members[name] = Member(name, raft.replace("8444", "8443"), roles=["database"],
                                     raft_address=raft)
    return state


async def test_drift_is_followed_while_the_lease_holds() -> None:
    store = RecordingStore(_state({"m1": "10.0.0.1:8444", "m3": "10.0.0.3:8444"}),
                           partners={"10.0.0.2:8444"})
    await follow_roles_in_raft(store, lambda: True)  # type: ignore[arg-type]
    assert store.changes == [("add", "10.0.0.3:8444"), ("remove", "10.0.0.2:8444")]


async def test_nothing_changes_once_the_lease_is_lost() -> None:
    store = RecordingStore(State(), partners={"10.0.0.2:8444", "10.0.0.3:8444"})
    await follow_roles_in_raft(store, lambda: False)  # type: ignore[arg-type]
    assert store.changes == []


async def test_nothing_changes_while_the_replica_is_not_loaded() -> None:
    store = RecordingStore(State(), partners={"10.0.0.2:8444"}, loaded=False)
    await follow_roles_in_raft(store, lambda: True)  # type: ignore[arg-type]
    assert store.changes == []


async def test_the_lease_is_checked_before_each_change() -> None:
    store = RecordingStore(State(), partners={"10.0.0.2:8444", "10.0.0.3:8444"})
    looks = iter([True, True, False])
    await follow_roles_in_raft(store, lambda: next(looks))  # type: ignore[arg-type]
    assert store.changes == [("remove", "10.0.0.2:8444")]
