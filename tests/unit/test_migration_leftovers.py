"""What ends a live migration's half that a dead daemon left (node_agent/migration_leftovers.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node_agent.migration_leftovers import Side, end_step

SIDES = st.sampled_from(["outgoing", "incoming"])


@given(SIDES, st.booleans())
def test_nothing_is_done_while_an_intent_holds_the_instance(side: Side,
                                                            lives_here: bool) -> None:
    assert end_step(side, lives_here=lives_here, held=True) == ""


@given(SIDES, st.booleans())
def test_the_guest_ends_running_where_the_instance_lives_and_only_there(
        side: Side, lives_here: bool) -> None:
    """Where the state puts the instance its QEMU runs (resume the source, run the
    target); elsewhere it goes (drop the source, abort the target): once either way."""
    step = end_step(side, lives_here=lives_here, held=False)
    runs_here = step in ("resume_source", "finish_incoming")
    assert runs_here == lives_here
    assert step.endswith("_source") == (side == "outgoing")
    assert step.endswith("_incoming") == (side == "incoming")
