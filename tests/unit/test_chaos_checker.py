"""The chaos checker on hand-made and generated histories (no cluster involved).

The generated histories come from ``simulate``: a real sequential register executes ops at
linearization points 0, 1, 2, ... and each op's window is stretched at random around its
point, so the history is linearizable by construction (Wing & Gong 1993's definition read
backwards). Breaking one read must then make the checker fail.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from tests.chaos.checker import InvalidHistory, check, summarize
from tests.chaos.durability import LossKind
from tests.chaos.history import History, Kind, Op, Outcome, Recorder, Value
from tests.chaos.linearizability import Verdict, check_key

OK, FAIL, UNKNOWN = Outcome.OK, Outcome.FAIL, Outcome.UNKNOWN
READ, WRITE, CREATE, CAS, DELETE = Kind.READ, Kind.WRITE, Kind.CREATE, Kind.CAS, Kind.DELETE
MEMBERS = ("m1", "m2", "m3")
REGISTER_KINDS = [READ, WRITE, CREATE, CAS, DELETE]  # start/stop: test_chaos_instances.py
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Ops:
    """Terse history building: ``h.add("c1", WRITE, "k", 0, 1, OK, "a")``."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def add(self, client: str, kind: Kind, key: str, invoke: float, complete: float | None,
            outcome: Outcome, value: Value = None, expected: Value = None) -> Op:
        op = Op(len(self.ops), client, kind, key, invoke, complete, outcome, value, expected)
        self.ops.append(op)
        return op

    def history(self, final: Value = None, key: str = "k", initial: Value = None,
                members: Sequence[str] = MEMBERS) -> History:
        """The history with every member holding ``final`` for ``key``."""
        state = {m: ({} if final is None else {key: final}) for m in members}
        return History(tuple(self.ops), {} if initial is None else {key: initial}, state)


# --- hand-made histories ---------------------------------------------------------------

def test_a_correct_concurrent_history_passes() -> None:
    h = Ops()
    h.add("c1", WRITE, "k", 0.0, 2.0, OK, "a")
    h.add("c2", READ, "k", 0.5, 1.5, OK, None)    # before the write took effect
    h.add("c3", READ, "k", 1.0, 3.0, OK, "a")     # after it
    h.add("c2", CAS, "k", 3.5, 5.0, OK, "b", expected="a")
    h.add("c3", CAS, "k", 4.0, 6.0, FAIL, "c", expected="a")  # lost the race: 412
    h.add("c1", READ, "k", 4.5, 5.5, OK, "b")
    h.add("c1", CREATE, "p1", 0.0, 1.0, OK, {"config": {"limits.cpu": "1"}})
    h.add("c2", CREATE, "p1", 2.0, 3.0, FAIL, {"config": {}})    # 409: exists
    final = {m: {"k": "b", "p1": {"config": {"limits.cpu": "1"}}} for m in MEMBERS}
    report = check(History(tuple(h.ops), {}, final))
    assert report.ok, report.details()
    assert (report.operations, report.acknowledged, report.unknown) == (8, 6, 0)


def test_a_lost_acknowledged_write_is_reported_with_its_op_and_member() -> None:
    h = Ops()
    created = h.add("c1", CREATE, "profiles/p1", 0.0, 1.0, OK, {"description": "x"})
    final = {"m1": {"profiles/p1": {"description": "x"}}, "m2": {}, "m3": {}}
    report = check(History(tuple(h.ops), {}, final))
    assert [(loss.kind, loss.member, loss.op) for loss in report.losses] == [
        (LossKind.LOST_WRITE, "m2", created), (LossKind.LOST_WRITE, "m3", created)]
    assert "lost write on m2: #0 c1 create" in report.details()[0]
    assert not report.ok


def test_an_overwritten_register_value_is_lost_when_the_older_one_survives() -> None:
    h = Ops()
    h.add("c1", WRITE, "k", 0.0, 1.0, OK, "a")
    newer = h.add("c2", WRITE, "k", 2.0, 3.0, OK, "b")
    report = check(h.history(final="a"))
    assert {loss.op for loss in report.losses} == {newer}
    assert [r.key for r in report.non_linearizable] == ["k"]


def test_of_two_concurrent_writes_either_may_survive() -> None:
    for survivor in ("a", "b"):
        h = Ops()
        h.add("c1", WRITE, "k", 0.0, 2.0, OK, "a")
        h.add("c2", WRITE, "k", 1.0, 3.0, OK, "b")
        assert check(h.history(final=survivor)).ok


def test_an_acknowledged_delete_that_reappears_is_reported() -> None:
    h = Ops()
    h.add("c1", CREATE, "p1", 0.0, 1.0, OK, "x")
    deleted = h.add("c2", DELETE, "p1", 2.0, 3.0, OK)
    report = check(h.history(final="x", key="p1"))
    assert {(loss.kind, loss.op) for loss in report.losses} == {(LossKind.RESURRECTED, deleted)}
    assert not report.ok


def test_a_delete_followed_by_an_acknowledged_create_is_not_a_resurrection() -> None:
    h = Ops()
    h.add("c1", CREATE, "p1", 0.0, 1.0, OK, "x")
    h.add("c2", DELETE, "p1", 2.0, 3.0, OK)
    h.add("c1", CREATE, "p1", 4.0, 5.0, OK, "y")
    assert check(h.history(final="y", key="p1")).ok


def test_a_stale_read_is_not_linearizable() -> None:
    h = Ops()
    h.add("c1", WRITE, "k", 0.0, 1.0, OK, "a")
    h.add("c1", WRITE, "k", 2.0, 3.0, OK, "b")
    stale = h.add("c2", READ, "k", 4.0, 5.0, OK, "a")  # "b" was acknowledged before
    report = check(h.history(final="b"))
    assert not report.losses
    [bad] = report.non_linearizable
    assert bad.key == "k" and stale.describe() in bad.explanation
    assert 'leaving the value "b"' in bad.explanation


def test_a_read_concurrent_with_the_write_may_see_either_value() -> None:
    for seen in ("a", "b"):
        h = Ops()
        h.add("c1", WRITE, "k", 0.0, 1.0, OK, "a")
        h.add("c1", WRITE, "k", 2.0, 4.0, OK, "b")
        h.add("c2", READ, "k", 3.0, 5.0, OK, seen)
        assert check(h.history(final="b")).ok


def test_a_cas_that_succeeded_against_a_stale_version_is_not_linearizable() -> None:
    h = Ops()
    h.add("c1", WRITE, "k", 0.0, 1.0, OK, "a")
    h.add("c1", READ, "k", 1.5, 2.0, OK, "a")          # c1 gets "a" and its ETag
    h.add("c2", CAS, "k", 2.5, 3.0, OK, "b", expected="a")
    h.add("c1", CAS, "k", 4.0, 5.0, OK, "c", expected="a")  # If-Match of "a": must be 412
    report = check(h.history(final="c"))
    assert [r.key for r in report.non_linearizable] == ["k"]


def test_an_unknown_write_that_took_effect_late_passes() -> None:
    h = Ops()
    h.add("c1", WRITE, "k", 0.0, 1.0, OK, "a")
    h.add("c2", WRITE, "k", 2.0, 3.0, UNKNOWN, "b")  # timed out at 3.0 ...
    h.add("c3", READ, "k", 4.0, 5.0, OK, "a")
    h.add("c3", READ, "k", 6.0, 7.0, OK, "b")        # ... and committed after 5.0
    assert check(h.history(final="b")).ok


def test_an_unknown_write_that_never_took_effect_passes() -> None:
    h = Ops()
    h.add("c1", WRITE, "k", 0.0, 1.0, OK, "a")
    h.add("c2", WRITE, "k", 2.0, 3.0, UNKNOWN, "b")
    h.add("c3", READ, "k", 4.0, 5.0, OK, "a")
    h.add("c2", CAS, "k", 5.0, None, UNKNOWN, "c", expected="a")  # client killed mid-flight
    assert check(h.history(final="a")).ok


def test_an_unknown_write_cannot_take_effect_before_it_was_invoked() -> None:
    h = Ops()
    h.add("c1", READ, "k", 0.0, 1.0, OK, "b")
    h.add("c2", WRITE, "k", 2.0, 3.0, UNKNOWN, "b")
    assert not check(h.history(final="b")).ok


def test_a_refused_write_never_takes_effect() -> None:
    h = Ops()
    h.add("c1", WRITE, "k", 0.0, 1.0, OK, "a")
    h.add("c2", CAS, "k", 2.0, 3.0, FAIL, "b", expected="zz")  # 412
    h.add("c3", READ, "k", 4.0, 5.0, OK, "b")
    assert [r.key for r in check(h.history(final="a")).non_linearizable] == ["k"]


def test_members_that_end_with_different_values_are_not_linearizable() -> None:
    h = Ops()
    h.add("c1", WRITE, "k", 0.0, 1.0, OK, "a")
    h.add("c2", WRITE, "k", 2.0, 3.0, UNKNOWN, "b")
    final = {"m1": {"k": "a"}, "m2": {"k": "b"}}
    report = check(History(tuple(h.ops), {}, final))
    assert not report.losses  # an unknown op may go either way ...
    assert [r.key for r in report.non_linearizable] == ["k"]  # ... but not both ways


def test_an_initial_value_is_the_registers_first_state() -> None:
    h = Ops()
    h.add("c1", CAS, "k", 0.0, 1.0, OK, "a", expected="v0")
    assert check(h.history(final="a", initial="v0")).ok
    assert not check(h.history(final="a")).ok


def test_the_search_gives_up_after_its_step_budget() -> None:
    h = Ops()
    for n in range(12):
        h.add(f"c{n}", WRITE, "k", 0.0, None, UNKNOWN, f"v{n}")
    h.add("c", READ, "k", 1.0, 2.0, OK, "never written")
    result = check_key("k", h.ops, max_steps=50)
    assert result.verdict is Verdict.UNDECIDED
    assert not result.ok


# --- the history format ----------------------------------------------------------------

def test_a_history_round_trips_through_a_json_file(tmp_path: Path) -> None:
    h = Ops()
    h.add("c1", CAS, "k", 0.0, 1.0, OK, {"a": [1, 2]}, expected={"b": None})
    h.add("c2", DELETE, "k", 0.5, None, UNKNOWN)
    history = h.history(final={"a": [1, 2]})
    history.dump(tmp_path / "history.json")
    assert History.load(tmp_path / "history.json") == history
    assert json.loads(json.dumps(history.to_json())) == history.to_json()


def test_a_history_of_another_format_is_refused() -> None:
    with pytest.raises(ValueError, match="not a corral-chaos-history/1"):
        History.from_json({"format": "jepsen", "ops": []})


def test_the_recorder_times_each_op_and_abandoned_ops_are_unknown() -> None:
    ticks = iter(range(100))
    rec = Recorder(clock=lambda: float(next(ticks)))
    w = rec.invoke("c1", WRITE, "k", value="a", member="m1")
    r = rec.invoke("c2", READ, "k", member="m2")
    c = rec.invoke("c3", CAS, "k", value="b", expected="zz")
    rec.ok(w, etag="e1")
    rec.ok(r, value="a")
    rec.fail(c, "412 ETag doesn't match")
    rec.invoke("c1", DELETE, "k")
    history = rec.history(final={"m1": {"k": "a"}})
    assert [(op.kind, op.invoke, op.complete, op.outcome, op.value) for op in history.ops] == [
        (WRITE, 0.0, 3.0, OK, "a"), (READ, 1.0, 4.0, OK, "a"), (CAS, 2.0, 5.0, FAIL, "b"),
        (DELETE, 6.0, None, UNKNOWN, None)]
    assert history.ops[3].error == "never completed"
    assert check(history).ok


def test_a_malformed_history_is_refused() -> None:
    h = Ops()
    h.add("c1", WRITE, "k", 2.0, 1.0, OK, "a")
    h.add("c2", WRITE, "k", 0.0, None, OK, "a")
    with pytest.raises(InvalidHistory, match="completes before|needs a completion|writes the"):
        check(h.history())


# --- the summary line ------------------------------------------------------------------

def test_the_summary_line_of_a_passing_run() -> None:
    h = Ops()
    h.add("c1", WRITE, "k", 0.0, 1.0, OK, "a")
    h.add("c2", WRITE, "k", 0.5, 2.0, UNKNOWN, "b")
    h.add("c3", CAS, "k", 0.5, 2.0, FAIL, "c", expected="x")
    summary = summarize(check(h.history(final="b")), faults=12, replicas_agree=True,
                        convergence=3.24)
    assert summary.line() == (
        "chaos: 3 operations, 1 acknowledged, 1 unknown, 0 lost, 0 non-linearizable keys, "
        "12 faults injected, replicas agree, converged in 3.2 s")
    assert summary.ok and summary.failures == []


def test_the_summary_of_a_failing_run_says_why() -> None:
    h = Ops()
    h.add("c1", WRITE, "k", 0.0, 1.0, OK, "a")
    summary = summarize(check(h.history(final="zz")), faults=3, replicas_agree=False,
                        convergence=None)
    assert "1 lost, 1 non-linearizable keys" in summary.line()
    assert "replicas DISAGREE, never converged" in summary.line()
    assert summary.failures[-2:] == ["replicas disagree",
                                     "no write accepted within 10 s of the last heal"]
    assert len(summary.failures) == 3 + 1 + 2 and not summary.ok  # 3 members lost it


# --- generated histories ---------------------------------------------------------------

def simulate(rnd: random.Random, n_ops: int, keys: Sequence[str] = ("k",),
             unknown: float = 0.2, spread: float = 3.0) -> History:
    """A linearizable history: a sequential register run at points 0, 1, 2, ...

    Each op's window is stretched around its point by up to ``spread``. An unknown op may
    have taken effect at its point (even after its client gave up) or never.
    """
    state: dict[str, Value] = {k: rnd.choice([None, "v0"]) for k in keys}
    initial = {k: v for k, v in state.items() if v is not None}
    written: dict[str, list[Value]] = {k: [None, "v0"] for k in keys}
    ops = []
    for i in range(n_ops):
        key, kind, point = rnd.choice(keys), rnd.choice(REGISTER_KINDS), float(i)
        value, expected, applies = _simulated_op(rnd, kind, state[key], written[key], f"v{i + 1}")
        invoke = point - rnd.uniform(0.0, spread)
        complete: float | None = point + rnd.uniform(0.0, spread)
        if rnd.random() < unknown:
            outcome, complete = UNKNOWN, rnd.choice([None, invoke + rnd.uniform(0.0, spread)])
            applies = applies and rnd.random() < 0.5
            value = None if kind is READ else value
        else:
            outcome = OK if applies else FAIL
        if applies and kind is not READ:
            state[key] = None if kind is DELETE else value
            written[key].append(value)
        ops.append(Op(i, f"c{rnd.randrange(4)}", kind, key, invoke, complete, outcome, value,
                      expected))
    final = {m: {k: v for k, v in state.items() if v is not None} for m in MEMBERS}
    return History(tuple(ops), initial, final)


def _simulated_op(rnd: random.Random, kind: Kind, current: Value, written: list[Value],
                  new: str) -> tuple[Value, Value, bool]:
    """(value, expected, whether it applies) of ``kind`` against ``current``."""
    if kind is READ:
        return current, None, True
    if kind is WRITE:
        return new, None, True
    if kind is CREATE:
        return new, None, current is None
    if kind is CAS:
        expected = current if rnd.random() < 0.6 else rnd.choice(written)
        return new, expected, expected == current
    return None, None, current is not None


histories = st.builds(simulate, st.randoms(use_true_random=False), st.integers(0, 25),
                      st.sampled_from([("k",), ("k", "j")]), st.sampled_from([0.0, 0.1, 0.3]),
                      st.sampled_from([0.5, 3.0, 8.0]))


@SETTINGS
@given(histories)
def test_histories_of_a_real_register_are_always_linearizable(history: History) -> None:
    report = check(history)
    assert report.ok, report.details()


@SETTINGS
@given(histories, st.data())
def test_a_read_of_a_value_never_written_is_not_linearizable(history: History,
                                                             data: st.DataObject) -> None:
    reads = [op for op in history.ops if op.kind is READ and op.outcome is OK]
    assume(reads)
    bad = data.draw(st.sampled_from(reads))
    ops = tuple(op if op is not bad else Op(bad.id, bad.client, READ, bad.key, bad.invoke,
                                            bad.complete, OK, "never written")
                for op in history.ops)
    report = check(History(ops, history.initial, history.final))
    assert [r.key for r in report.non_linearizable] == [bad.key]


def _sequentially_legal(order: Sequence[Op], initial: Value) -> bool:
    """The register's rules restated on their own, for the brute-force oracle."""
    state = initial
    for op in order:
        if op.kind is READ:
            if op.value != state:
                return False
            continue
        allowed = {WRITE: True, CREATE: state is None, CAS: state == op.expected,
                   DELETE: state is not None}[op.kind]
        if allowed:
            state = None if op.kind is DELETE else op.value
        elif op.outcome is OK:
            return False
    return True


def _brute_force(ops: Sequence[Op], initial: Value) -> bool:
    """Any order of the ok ops plus some of the unknown ones that respects real time."""
    definite = [op for op in ops if op.outcome is OK]
    maybe = [op for op in ops if op.outcome is UNKNOWN and op.kind is not READ]
    for chosen in itertools.chain.from_iterable(
            itertools.combinations(maybe, n) for n in range(len(maybe) + 1)):
        for order in itertools.permutations(definite + list(chosen)):
            in_time = all(not (later.deadline < earlier.invoke)
                          for i, earlier in enumerate(order) for later in order[i + 1:])
            if in_time and _sequentially_legal(order, initial):
                return True
    return False


@st.composite
def small_histories(draw: st.DrawFn) -> list[Op]:
    """Up to 5 ops on one key with values from a tiny set, so both verdicts are common."""
    ops = []
    for i in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(REGISTER_KINDS))
        invoke = float(draw(st.integers(0, 8)))
        outcome = draw(st.sampled_from([OK, OK, UNKNOWN, FAIL]))
        value = draw(st.sampled_from(["a", "b", None] if kind is READ else ["a", "b"]))
        ops.append(Op(i, f"c{i}", kind, "k", invoke, invoke + draw(st.integers(0, 4)), outcome,
                      None if kind is DELETE else value,
                      draw(st.sampled_from(["a", "b", None])) if kind is CAS else None))
    return ops


@settings(max_examples=200, deadline=None)
@given(small_histories(), st.sampled_from([None, "a"]))
def test_the_search_agrees_with_brute_force_on_small_histories(ops: list[Op],
                                                               initial: Value) -> None:
    expected = _brute_force(ops, initial)
    event(f"linearizable: {expected}")
    assert check_key("k", ops, initial).ok == expected


def test_500_ops_over_5_keys_check_in_well_under_a_second() -> None:
    history = simulate(random.Random(13), 500, keys=("a", "b", "c", "d", "e"), unknown=0.1,
                       spread=12.0)
    started = time.perf_counter()
    report = check(history)
    elapsed = time.perf_counter() - started
    assert report.ok, report.details()
    assert elapsed < 1.0, f"{elapsed:.2f} s"
