"""The leader's liveness tracker: deadlines on one injected monotonic clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.membership.liveness.tracker import Committed, LivenessTracker, Transition

THRESHOLD = 3.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def online(beats: int = 0) -> Committed:
    return Committed("ONLINE", beats)


def test_a_new_leader_gives_every_online_member_a_threshold_of_grace() -> None:
    clock = Clock()
    tracker = LivenessTracker(clock, THRESHOLD)
    committed = {"m1": online(5), "m2": online(7)}
    tracker.start(committed)
    clock.now += THRESHOLD
    assert tracker.transitions(committed) == []
    clock.now += 0.1
    assert tracker.transitions(committed) == [Transition("m1", "OFFLINE", 5),
                                              Transition("m2", "OFFLINE", 7)]


def test_a_growing_heartbeat_count_is_a_heartbeat_heard_now() -> None:
    clock = Clock()
    tracker = LivenessTracker(clock, THRESHOLD)
    tracker.start({"m1": online(1)})
    for beats in range(2, 10):
        clock.now += THRESHOLD - 0.5
        assert tracker.transitions({"m1": online(beats)}) == []
    clock.now += THRESHOLD + 0.1
    assert tracker.transitions({"m1": online(9)}) == [Transition("m1", "OFFLINE", 9)]


def test_an_offline_member_comes_back_only_on_a_newer_heartbeat() -> None:
    clock = Clock()
    tracker = LivenessTracker(clock, THRESHOLD)
    tracker.start({"m1": Committed("OFFLINE", 4, since=4)})
    assert tracker.transitions({"m1": Committed("OFFLINE", 4, since=4)}) == []
    clock.now += 100
    assert tracker.transitions({"m1": Committed("OFFLINE", 4, since=4)}) == []
    tracker.heard("m1", 5)
    assert tracker.transitions({"m1": Committed("OFFLINE", 5, since=4)}) == [
        Transition("m1", "ONLINE", 5)]


def test_a_stale_heartbeat_does_not_propose_online() -> None:
    clock = Clock()
    tracker = LivenessTracker(clock, THRESHOLD)
    tracker.start({"m1": Committed("OFFLINE", 4, since=4)})
    tracker.heard("m1", 3)  # applied before the verdict, delivered late
    assert tracker.transitions({"m1": Committed("OFFLINE", 4, since=4)}) == []


def test_joined_members_get_grace_and_removed_ones_are_forgotten() -> None:
    clock = Clock()
    tracker = LivenessTracker(clock, THRESHOLD)
    tracker.start({"m1": online()})
    clock.now += THRESHOLD - 1
    both = {"m1": online(1), "m2": online()}
    assert tracker.transitions(both) == []
    clock.now += THRESHOLD - 0.5
    assert tracker.transitions(both) == []  # m1 heard 2.5 s ago, m2 joined 2.5 s ago
    assert tracker.transitions({"m1": online(1)}) == []
    assert not tracker.alive("m2")


def test_a_raised_threshold_applies_to_deadlines_already_running() -> None:
    clock = Clock()
    tracker = LivenessTracker(clock, THRESHOLD)
    tracker.start({"m1": online()})
    clock.now += THRESHOLD + 1
    tracker.threshold = 10.0
    assert tracker.transitions({"m1": online()}) == []


# Heartbeat gaps in tenths of a second, as the leader observes them.
gaps = st.lists(st.integers(min_value=1, max_value=80), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(gaps=gaps, threshold=st.sampled_from([3.0, 5.0, 10.0]))
def test_offline_exactly_when_a_gap_exceeds_the_threshold_and_online_after(
        gaps: list[int], threshold: float) -> None:
    """Replaying the tracker's verdicts into the committed state (as apply would), the
    member is OFFLINE at a look iff the leader heard nothing for longer than the threshold,
    and every committed verdict alternates (only transitions are committed)."""
    clock = Clock()
    tracker = LivenessTracker(clock, threshold)
    committed = Committed("ONLINE", 0, 0)
    tracker.start({"m1": committed})
    heard_at, beats, verdicts = clock.now, 0, []
    for gap in gaps:
        for _ in range(gap):  # the leader looks every 0.1 s
            clock.now = round(clock.now + 0.1, 6)
            for change in tracker.transitions({"m1": committed}):
                verdicts.append(change.status)
                committed = Committed(change.status, beats, change.beats)
            silent = clock.now - heard_at
            assert (committed.status == "OFFLINE") == (silent > threshold)
        beats += 1
        heard_at = clock.now
        committed = Committed(committed.status, beats, committed.since)
        for change in tracker.transitions({"m1": committed}):
            verdicts.append(change.status)
            committed = Committed(change.status, beats, change.beats)
        assert committed.status == "ONLINE"
    assert all(a != b for a, b in zip(verdicts, verdicts[1:], strict=False))
    assert verdicts[:1] in ([], ["OFFLINE"])
