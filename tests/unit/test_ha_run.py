"""The HA chaos driver's pure parts: reading a monitor's command line, choosing the host
to fault, the detection time from the samples."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.chaos.ha_checker import Sample
from tests.chaos.ha_run import detection, monitor_of, pick_target

ROOTS = {Path("/tmp/dc/m1"): "m1", Path("/tmp/dc/m2"): "m2"}


def test_a_monitor_names_its_member_and_container() -> None:
    assert monitor_of("[lxc monitor] /tmp/dc/m2/containers ha1", ROOTS) == ("m2", "ha1")


def test_other_processes_and_other_roots_are_not_monitors() -> None:
    assert monitor_of("/usr/bin/python3 -m corral_cli.main daemon", ROOTS) is None
    assert monitor_of("[lxc monitor] /tmp/dc/m22/containers ha1", ROOTS) is None
    assert monitor_of("[lxc monitor] /tmp/dc/m1/vms ha1", ROOTS) is None
    assert monitor_of("", ROOTS) is None


def test_the_target_runs_the_most_instances_ties_drawn() -> None:
    assert pick_target({"a": ("m1",), "b": ("m2",), "c": ("m2",)}, random.Random(1)) == "m2"
    drawn = {pick_target({"a": ("m1",), "b": ("m2",), "c": ()}, random.Random(seed))
             for seed in range(20)}
    assert drawn == {"m1", "m2"}
    assert pick_target({"a": ()}, random.Random(1)) is None


def test_detection_is_the_first_sample_without_the_old_copy() -> None:
    samples = [Sample(9.0, "a", ()), Sample(10.0, "a", ("m1",)), Sample(10.1, "b", ("m1",)),
               Sample(12.5, "a", ("m1",)), Sample(12.6, "a", ()), Sample(13.0, "a", ())]
    assert detection(samples, "a", "m1", 10.0) == pytest.approx(2.6)
    assert detection(samples, "b", "m1", 10.0) is None
