"""The fencing lease inequality: the lease always ends (fence complete) before the leader
can judge the member OFFLINE, and survives one lost heartbeat (Patroni's rule)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.state.apply_members import offline_threshold
from cluster.state.model import State
from node_agent.fencing.timing import (
    DEFAULT,
    DEFAULT_OFFLINE_THRESHOLD,
    MIN_OFFLINE_THRESHOLD,
    Timing,
    fence_before_offline,
    fence_complete_by,
    fencing_lease,
    offline_no_sooner,
    patroni_rule,
)


def test_the_defaults_are_the_ones_written_down() -> None:
    assert (DEFAULT_OFFLINE_THRESHOLD, MIN_OFFLINE_THRESHOLD) == (4.0, 3.0)
    assert offline_threshold(State()) == DEFAULT_OFFLINE_THRESHOLD
    assert (DEFAULT.heartbeat_period, DEFAULT.submit_timeout, DEFAULT.drift,
            DEFAULT.check_period, DEFAULT.kill_budget) == (0.5, 0.5, 0.05, 0.1, 0.5)


def test_the_default_threshold_gives_a_lease_of_about_three_seconds() -> None:
    lease = fencing_lease(DEFAULT_OFFLINE_THRESHOLD)
    assert lease == pytest.approx((4 / 1.05 - 0.5) / 1.05 - 0.1)
    assert 3.0 < lease < 3.1
    # the longest lease: its fence completes right at the earliest OFFLINE verdict
    assert offline_no_sooner(4.0) - fence_complete_by(lease) == pytest.approx(0.0, abs=1e-9)


def test_the_minimum_threshold_still_gives_a_lease_that_keeps_patronis_rule() -> None:
    lease = fencing_lease(MIN_OFFLINE_THRESHOLD)
    assert 2.1 < lease < 2.2
    assert patroni_rule(lease)
    assert DEFAULT.heartbeat_period + 2 * DEFAULT.submit_timeout == 1.5 <= lease


@pytest.mark.parametrize("threshold", [2.2, 1.0, 0.0, -4.0, math.nan])
def test_a_threshold_too_short_for_any_lease_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError):
        fencing_lease(threshold)


def test_an_infinite_threshold_never_fences() -> None:
    assert fencing_lease(math.inf) == math.inf


def test_the_inequality_counts_drift_against_the_member_both_ways() -> None:
    # a lease that would do without drift is refused with it
    lease = 4.0 - 0.1 - 0.5
    assert fence_before_offline(lease, 4.0, Timing(drift=0.0))
    assert not fence_before_offline(lease, 4.0)


@given(st.floats(min_value=MIN_OFFLINE_THRESHOLD, max_value=1e6),
       st.floats(min_value=0.0, max_value=0.2), st.floats(min_value=0.01, max_value=0.3),
       st.floats(min_value=0.0, max_value=0.6))
def test_the_computed_lease_keeps_both_inequalities_and_is_the_longest(
        threshold: float, drift: float, check: float, kill: float) -> None:
    timing = Timing(drift=drift, check_period=check, kill_budget=kill)
    try:
        lease = fencing_lease(threshold, timing)
    except ValueError:
        # refused only when Patroni's rule cannot hold at this threshold
        longest = (threshold / (1 + drift) - kill) / (1 + drift) - check
        assert not patroni_rule(longest * (1 + 1e-9), timing)
        return
    assert lease > 0
    assert fence_before_offline(lease, threshold, timing)
    assert patroni_rule(lease, timing)
    assert not fence_before_offline(lease * (1 + 1e-9) + 1e-9, threshold, timing)


@given(st.floats(min_value=MIN_OFFLINE_THRESHOLD, max_value=1e6))
def test_with_corrals_timing_every_accepted_threshold_has_a_lease(threshold: float) -> None:
    lease = fencing_lease(threshold)
    assert fence_before_offline(lease, threshold) and patroni_rule(lease)
