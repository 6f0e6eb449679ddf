"""Numbers in the cluster config are refused when they are not numbers (they were read
as the default without a word)."""

from __future__ import annotations

import pytest

from cluster.state.apply import apply
from cluster.state.commands import command
from cluster.state.model import State


@pytest.mark.parametrize(("key", "value"), [
    ("cluster.offline_threshold", "soon"), ("cluster.offline_threshold", "1"),
    ("cluster.offline_threshold", "nan"), ("cluster.max_voters", "0"),
    ("cluster.max_voters", "three")])
def test_nonsense_is_refused_and_changes_nothing(key: str, value: str) -> None:
    state = State()
    state.config = {"cluster.offline_threshold": "12"}
    result = apply(state, command("config.set", config={key: value}, merge=True))
    assert not result.ok and result.code == 400 and key in result.error
    assert state.config == {"cluster.offline_threshold": "12"}


@pytest.mark.parametrize(("key", "value"), [
    ("cluster.offline_threshold", "3"), ("cluster.offline_threshold", "20.5"),
    ("cluster.max_voters", "5"), ("cluster.offline_threshold", "")])
def test_numbers_are_taken(key: str, value: str) -> None:
    state = State()
    assert apply(state, command("config.set", config={key: value}, merge=True)).ok
