"""The HA chaos driver's pure parts: choosing the host to fault, the detection time from
the samples (where an instance runs is ``devtools.ha_probe``'s, tested with it)."""

from __future__ import annotations

import random

import pytest

from tests.chaos.ha_checker import Sample
from tests.chaos.ha_run import detection, pick_target


def test_the_target_runs_the_most_instances_ties_drawn() -> None:
    assert pick_target({"a": ("m1",), "b": ("m2",), "c": ("m2",)}, random.Random(1)) == "m2"
    drawn = {pick_target({"a": ("m1",), "b": ("m2",), "c": ()}, random.Random(seed))
             for seed in range(20)}
    assert drawn == {"m1", "m2"}
    assert pick_target({"a": ()}, random.Random(1)) is None


def test_a_preferred_instances_host_is_the_target_while_it_runs() -> None:
    placement = {"a": ("m1",), "b": ("m1",), "vm": ("m2",)}
    assert pick_target(placement, random.Random(1)) == "m1"
    assert pick_target(placement, random.Random(1), ("vm",)) == "m2"
    assert pick_target({**placement, "vm": ()}, random.Random(1), ("vm",)) == "m1"


def test_detection_is_the_first_sample_without_the_old_copy() -> None:
    samples = [Sample(9.0, "a", ()), Sample(10.0, "a", ("m1",)), Sample(10.1, "b", ("m1",)),
               Sample(12.5, "a", ("m1",)), Sample(12.6, "a", ()), Sample(13.0, "a", ())]
    assert detection(samples, "a", "m1", 10.0) == pytest.approx(2.6)
    assert detection(samples, "b", "m1", 10.0) is None
