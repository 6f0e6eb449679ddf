"""The pure parts of the newer nemeses: which members a minority or majority partition
cuts off, how a journal or snapshot is damaged (and that the journal's replay then
refuses it or cuts it), and that the chaos nemesis draws every kind in each round."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.state.compaction import NEVER_SECONDS
from cluster.state.errors import ReplicaDamaged
from cluster.state.journal import MAGIC, encode, replay
from cluster.state.policy import COMPACTION_SECONDS_ENV, compaction_seconds
from devtools.nemesis import NemesisError, side
from devtools.nemesis_disk import FLIP_BYTES, damage
from tests.chaos.faults import KINDS, Nemesis

NAMES5 = ["m1", "m2", "m3", "m4", "m5"]


def test_minority_and_majority_sides() -> None:
    assert side(NAMES5, "minority") == ["m1", "m2"]
    assert side(NAMES5, "majority") == ["m1", "m2", "m3"]
    assert side(NAMES5, "minority", "m4")[0] == "m4"
    assert side(["m1", "m2", "m3"], "minority", "m2") == ["m2"]
    assert sorted(side(["m1", "m2", "m3"], "majority", "m3")) in (["m1", "m3"], ["m2", "m3"])


@given(st.integers(3, 7), st.sampled_from(["minority", "majority"]), st.integers(0, 99))
def test_a_side_is_a_strict_minority_or_a_bare_majority_with_its_anchor(
        size: int, which: str, seed: int) -> None:
    names = [f"m{i}" for i in range(1, size + 1)]
    anchor = names[seed % size]
    cut = side(names, which, anchor, random.Random(seed))
    assert anchor in cut and len(set(cut)) == len(cut) and set(cut) <= set(names)
    assert (2 * len(cut) < size) if which == "minority" else (2 * len(cut) > size)
    assert 0 < len(cut) < size


def test_sides_refuse_what_makes_no_sense() -> None:
    for names, which, anchor in ((["m1", "m2"], "minority", None),
                                 (NAMES5, "half", None), (NAMES5, "minority", "m9")):
        with pytest.raises(NemesisError):
            side(names, which, anchor)


@given(st.binary(min_size=1, max_size=20000), st.sampled_from(["flip", "truncate"]))
def test_damage_always_changes_the_middle_of_the_file(data: bytes, how: str) -> None:
    damaged = damage(data, how)
    assert damaged != data
    if how == "truncate":
        assert damaged == data[:len(data) // 2]
    else:
        assert len(damaged) == len(data)
        changed = [i for i, (a, b) in enumerate(zip(data, damaged, strict=True)) if a != b]
        assert len(changed) <= FLIP_BYTES and changed[0] <= len(data) // 2 <= changed[-1] + 1


def _journal_bytes(count: int) -> bytes:
    return MAGIC + b"".join(encode(b"command %d" % i * 30, i, 1) for i in range(1, count + 1))


def test_a_flipped_journal_is_refused_and_a_truncated_one_loses_its_tail() -> None:
    data = _journal_bytes(200)
    with pytest.raises(ReplicaDamaged):
        replay(damage(data, "flip"), "journal")
    cut = replay(damage(data, "truncate"), "journal")
    assert cut.torn and 0 < len(cut.entries) < 200  # a torn tail: what a crash leaves


def test_the_nemesis_draws_every_kind_once_per_round(tmp_path: Path) -> None:
    nemesis = Nemesis(tmp_path, ["m1", "m2", "m3"], lambda: "m1", random.Random(3))
    first = [nemesis.next_kind() for _ in KINDS]
    second = [nemesis.next_kind() for _ in KINDS]
    assert sorted(first) == sorted(second) == sorted(KINDS) and first != second


def test_no_compaction_by_time_unless_a_test_asks_for_it() -> None:
    assert compaction_seconds({}) == NEVER_SECONDS
    assert compaction_seconds({COMPACTION_SECONDS_ENV: "20"}) == 20.0
    for bad in ("", "soon", "0", "-5"):
        assert compaction_seconds({COMPACTION_SECONDS_ENV: bad}) == NEVER_SECONDS
