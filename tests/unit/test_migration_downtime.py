"""The downtime limits a live migration gives QEMU, pass by pass (``downtime.py``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_agent.drivers.qemu.migration.downtime import (
    FIRST_MS,
    DowntimeSchedule,
    downtime_steps,
    limit_for_pass,
)


def test_the_steps_double_from_twenty_up_to_the_limit() -> None:
    assert downtime_steps(300) == [20, 40, 80, 160, 300]
    assert downtime_steps(50) == [20, 40, 50]
    assert downtime_steps(20) == [20]
    assert downtime_steps(5) == [5]  # a limit below the first step is used as it is


@pytest.mark.parametrize("bad", [0, -1])
def test_a_limit_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        downtime_steps(bad)


@given(st.integers(min_value=1, max_value=100_000))
def test_steps_rise_and_never_pass_the_limit(limit: int) -> None:
    steps = downtime_steps(limit)
    assert steps[-1] == limit and steps[0] == min(limit, FIRST_MS)
    assert all(a < b for a, b in zip(steps, steps[1:], strict=False))


@given(st.integers(min_value=1, max_value=100_000), st.integers(min_value=0, max_value=100))
def test_later_passes_never_get_a_lower_limit(limit: int, pass_number: int) -> None:
    steps = downtime_steps(limit)
    assert limit_for_pass(steps, pass_number) <= limit_for_pass(steps, pass_number + 1)


def test_two_passes_at_the_first_limit_then_one_step_a_pass() -> None:
    schedule = DowntimeSchedule(300)
    assert schedule.current == 20
    assert [schedule.on_pass(n) for n in range(1, 9)] == [None, None, 40, 80, 160, 300,
                                                          None, None]
    assert schedule.current == 300
