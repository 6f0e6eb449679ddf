"""Resources arithmetic and what an instance demands (corral_shared.resources)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral_shared.resources import (
    DEFAULTS,
    GiB,
    MiB,
    Resources,
    TiB,
    cpu_count,
    demand_of,
    format_amount,
    format_bytes,
)

ROOT = {"root": {"type": "disk", "path": "/", "pool": "default"}}


def test_resources_add_subtract_and_compare() -> None:
    a, b = Resources(2, 3 * GiB, 10 * GiB), Resources(1, 1 * GiB, 5 * GiB)
    assert a + b == Resources(3, 4 * GiB, 15 * GiB)
    assert a - b == Resources(1, 2 * GiB, 5 * GiB)
    assert b.fits_in(a) and not a.fits_in(b)
    assert a.fits_in(a)


def test_shortfall_names_the_first_dimension_that_does_not_fit() -> None:
    room = Resources(4, 8 * GiB, 100 * GiB)
    assert Resources(4, 8 * GiB, 100 * GiB).shortfall(room) is None
    assert Resources(5, 9 * GiB, 101 * GiB).shortfall(room) == "cpu"
    assert Resources(1, 9 * GiB, 101 * GiB).shortfall(room) == "memory"
    assert Resources(1, 1 * GiB, 101 * GiB).shortfall(room) == "disk"


@given(st.floats(0, 1e4), st.integers(0, 2**50), st.integers(0, 2**50),
       st.floats(0, 1e4), st.integers(0, 2**50), st.integers(0, 2**50))
def test_fits_in_agrees_with_shortfall(c1: float, m1: int, d1: int, c2: float, m2: int,
                                       d2: int) -> None:
    a, b = Resources(c1, m1, d1), Resources(c2, m2, d2)
    assert a.fits_in(b) == (a.shortfall(b) is None)


def test_unset_limits_take_the_documented_defaults() -> None:
    assert demand_of("container", {}, ROOT) == Resources(0, 64 * MiB, 256 * MiB)
    assert demand_of("virtual-machine", {}, ROOT) == Resources(1, 1 * GiB, 10 * GiB)
    assert demand_of("container", {"limits.cpu": "", "limits.memory": ""}, {}) == \
        DEFAULTS["container"]


def test_cpu_count_and_cpu_sets() -> None:
    assert demand_of("container", {"limits.cpu": "4"}, ROOT).cpu == 4
    assert cpu_count("0-3") == 4
    assert cpu_count("1,3") == 2
    assert cpu_count("0-3,2,8") == 5
    assert cpu_count(" 2 ") == 2


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "abc", "3-1", "0-", ",", "1,,2"])
def test_bad_cpu_limits_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="limits.cpu"):
        demand_of("container", {"limits.cpu": value}, ROOT)


def test_memory_limits_with_units() -> None:
    assert demand_of("container", {"limits.memory": "256MiB"}, ROOT).memory == 256 * MiB
    assert demand_of("container", {"limits.memory": "1GB"}, ROOT).memory == 10**9
    assert demand_of("container", {"limits.memory": "2 GiB"}, ROOT).memory == 2 * GiB
    assert demand_of("container", {"limits.memory": "1073741824"}, ROOT).memory == GiB


def test_a_memory_percentage_counts_as_the_default() -> None:
    demand = demand_of("virtual-machine", {"limits.memory": "50%"}, ROOT)
    assert demand.memory == DEFAULTS["virtual-machine"].memory


@pytest.mark.parametrize("value", ["0", "0%", "101%", "abc", "5XB", "%", "-1GiB", "1.5.1MiB"])
def test_bad_memory_limits_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="limits.memory"):
        demand_of("container", {"limits.memory": value}, ROOT)


def test_root_disk_size_is_the_disk_demand() -> None:
    devices = {"root": {"type": "disk", "path": "/", "size": "20GiB"},
               "data": {"type": "disk", "path": "/srv", "size": "1TiB"}}
    assert demand_of("container", {}, devices).disk == 20 * GiB
    assert demand_of("container", {}, {"root": {"type": "disk", "path": "/",
                                                "size": ""}}).disk == 256 * MiB


@pytest.mark.parametrize("value", ["0", "big", "10 parsecs"])
def test_bad_root_disk_sizes_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="root disk size"):
        demand_of("container", {}, {"root": {"type": "disk", "path": "/", "size": value}})


def test_unknown_instance_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown instance type"):
        demand_of("pod", {}, ROOT)


def test_amounts_read_the_way_users_write_them() -> None:
    assert format_bytes(512 * MiB) == "512 MiB"
    assert format_bytes(int(3.1 * GiB)) == "3.1 GiB"
    assert format_bytes(4 * GiB) == "4 GiB"
    assert format_bytes(2 * TiB) == "2 TiB"
    assert format_bytes(100) == "100 B"
    assert format_amount("cpu", 1) == "1 CPU"
    assert format_amount("cpu", 2.5) == "2.5 CPUs"
    assert format_amount("memory", 4 * GiB) == "4 GiB"
