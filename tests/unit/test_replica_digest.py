"""Digests of the replicated state and the comparison of members' reports (pure)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

from cluster.api.replica_check import Report, compare
from cluster.state.apply import apply
from cluster.state.commands import Command
from cluster.state.digest import KEPT_MARKS, MARK, MarkBook, state_digest
from cluster.state.model import Action, Instance, State
from corral_cli.cluster_cmds import describe_verdict


def _state(suffix: str = "") -> State:
    """The same commands applied to a fresh state (strings built anew each time, so no
    object is shared between two calls)."""
    state = State()
    for i in range(3):
        name = "".join(["p", str(i), suffix])
        apply(state, Command(id=f"c{i}", type="profile.create", args={"name": name},
                             time=1000.0 + i))
    apply(state, Command(id="cfg", type="config.set", args={"config": {"core.x": "1"}},
                         time=1010.0))
    return state


def test_equal_states_have_equal_digests_whatever_objects_they_share() -> None:
    first, second = _state(), _state()
    name = second.profiles["p1"].name
    second.profiles["p1"].description = name[:0]  # "" but a different object
    assert state_digest(first) == state_digest(second)
    assert state_digest(pickle.loads(pickle.dumps(first))) == state_digest(first)


def test_any_change_changes_the_digest() -> None:
    base = state_digest(_state())
    changed = _state()
    changed.profiles["p2"].config["limits.cpu"] = "2"
    assert state_digest(changed) != base
    assert state_digest(_state("x")) != base
    one_more = _state()
    apply(one_more, Command(id="again", type="profile.create", args={"name": "q"}, time=2e3))
    assert state_digest(one_more) != base


def test_replicated_order_counts_but_derived_caches_do_not() -> None:
    base = _state()
    reordered = _state()
    reordered.profiles = dict(reversed(list(reordered.profiles.items())))
    assert state_digest(reordered) != state_digest(base)
    recomputing = _state()
    recomputing.reserved, recomputing.grouped = None, None
    assert state_digest(recomputing) == state_digest(base)


def test_digest_is_the_same_under_any_hash_seed(tmp_path: Path) -> None:
    """Sets (here in an action's arguments) iterate by the process's string hash seed."""
    program = (
        "from cluster.state.model import *; from cluster.state.digest import state_digest\n"
        "s = State(); s.instances['a'] = Instance('u', 'a', 'container', 'm1', 'x86_64', '',"
        " 1.0, pending=[Action(1, 'start', {'set': {'alpha', 'beta', 'gamma', 'delta'}})])\n"
        "print(state_digest(s))")
    digests = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed,
               "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        out = subprocess.run([sys.executable, "-c", program], env=env, check=True,
                             capture_output=True, text=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_mark_book_keeps_the_latest_marks_and_never_raises() -> None:
    book = MarkBook()
    state = _state()
    for i in range(KEPT_MARKS + 3):
        book.record(f"m{i}", 100 + i, state)
    assert book.get("m0") is None and book.get("m2") is None
    kept = book.get(f"m{KEPT_MARKS + 2}")
    assert kept is not None and kept.index == 100 + KEPT_MARKS + 2
    assert kept.digest == state_digest(state)
    broken = _state()
    broken.instances["x"] = Instance("u", "x", "container", "m1", "x86_64", "", 1.0,
                                     pending=[Action(1, "start", {"lock": threading.Lock()})])
    book.record("bad", 7, broken)
    found = book.get("bad")
    assert found is not None and found.digest.startswith("error:")


def test_the_marker_is_applied_like_any_command_and_changes_no_record() -> None:
    state = _state()
    before = (dict(state.profiles), dict(state.config))
    result = apply(state, Command(id="mk", type=MARK, args={"mark": "abc"}, time=3e3))
    assert result.ok and result.value == {"mark": "abc"}
    assert (dict(state.profiles), dict(state.config)) == before and "mk" in state.recent


def test_members_agree_at_one_index_with_one_digest() -> None:
    verdict = compare([Report("m1", 40, "aa"), Report("m2", 40, "aa"), Report("m3", 40, "aa")])
    assert verdict.agree and (verdict.index, verdict.digest) == (40, "aa")
    assert describe_verdict(verdict.to_json()) == "replicas agree at index 40"


def test_the_member_outside_the_largest_group_differs() -> None:
    verdict = compare([Report("m1", 40, "aa"), Report("m2", 40, "bb"), Report("m3", 40, "aa")])
    assert not verdict.agree and verdict.differ == ["m2"] and verdict.index == 40
    text = describe_verdict(verdict.to_json())
    assert text.splitlines() == ["replicas differ at index 40", "  m2: digest bb at index 40"]
    other_index = compare([Report("m1", 40, "aa"), Report("m2", 41, "aa"),
                           Report("m3", 40, "aa")])
    assert other_index.differ == ["m2"]


def test_a_member_without_a_digest_is_missing_and_spoils_agreement() -> None:
    verdict = compare([Report("m1", 40, "aa"), Report("m2", error="behind: ..."),
                       Report("m3", 40, "aa"), Report("m4", 40, "error: boom")])
    assert not verdict.agree and verdict.missing == ["m2", "m4"] and verdict.differ == []
    assert describe_verdict(verdict.to_json()).splitlines()[:2] == [
        "replicas not all compared at index 40: some gave no digest", "  m2: behind: ..."]


def test_without_a_largest_group_every_member_differs() -> None:
    verdict = compare([Report("m1", 40, "aa"), Report("m2", 40, "bb")])
    assert not verdict.agree and verdict.index is None and verdict.differ == ["m1", "m2"]
    assert not compare([Report("m1", error="unreachable")]).agree
