"""Choosing and checking a storage pool's driver and config before anything is made."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.api.handlers.bootstrap import _pool_choice
from cluster.api.response import ApiError
from corral_cli.parser import parse_args
from corral_cli.server import init_body
from node_agent.storage import btrfs_cli
from node_agent.storage.pools import config_problem
from node_agent.storage.sizes import GIB, default_loop_size, parse_size


@pytest.mark.parametrize(("text", "size"), [
    ("5GiB", 5 * GIB), ("5GB", 5 * 10**9), ("500MiB", 500 << 20), ("1.5GiB", 3 * GIB // 2),
    ("123", 123), ("64kB", 64000), ("2G", 2 * GIB), (" 7 TiB ", 7 << 40), (4096, 4096)])
def test_sizes_in_lxd_units(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "5 parsecs", "-1GiB", "0", "1e9", "5GiB5"])
def test_unparseable_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="Invalid size"):
        parse_size(text)


@given(st.integers(min_value=0, max_value=1 << 50))
def test_the_default_loop_size_is_a_fifth_of_the_free_space_within_5_to_30_gib(
        free: int) -> None:
    size = default_loop_size(free)
    assert 5 * GIB <= size <= 30 * GIB and size % GIB == 0
    if 25 * GIB <= free <= 150 * GIB:
        assert free // 5 - GIB < size <= free // 5


def test_unknown_drivers_and_keys_are_refused() -> None:
    assert "Unknown storage pool driver 'zfs'" in config_problem("zfs", {})
    assert "config key 'size'" in config_problem("dir", {"size": "5GiB"})
    assert config_problem("dir", {}) == "" == config_problem("dir", {"source": "/srv/x"})


@pytest.mark.skipif(bool(btrfs_cli.problem()), reason="btrfs-progs not installed")
def test_btrfs_config_is_checked(tmp_path: Path) -> None:
    assert config_problem("btrfs", {}) == ""
    assert config_problem("btrfs", {"size": "5GiB"}) == ""
    assert "Invalid size" in config_problem("btrfs", {"size": "lots"})
    assert "too small" in config_problem("btrfs", {"size": "100MiB"})
    assert "not both" in config_problem("btrfs", {"size": "1GiB", "source": "/dev/sda"})
    assert "absolute" in config_problem("btrfs", {"source": "relative/dir"})
    assert "No such file" in config_problem("btrfs", {"source": str(tmp_path / "missing")})
    assert "block device or a directory on a btrfs" in config_problem(
        "btrfs", {"source": str(tmp_path)})


def test_init_body_chooses_the_default_pool() -> None:
    assert _pool_choice({}) == ("dir", {})
    assert _pool_choice({"storage_path": "/srv/p"}) == ("dir", {"source": "/srv/p"})
    assert _pool_choice({"storage_backend": "btrfs", "storage_size": "8GiB"}) == (
        "btrfs", {"size": "8GiB"})
    with pytest.raises(ApiError) as refused:
        _pool_choice({"storage_size": "8GiB"})
    assert refused.value.code == 400


def test_lxd_init_storage_flags_map_to_the_init_body() -> None:
    args = parse_args(["init", "--auto", "--storage-backend", "btrfs",
                       "--storage-create-loop", "8", "--bridge-name", "br9"])
    assert init_body(args) == {"storage_backend": "btrfs", "storage_size": "8GiB",
                               "bridge_name": "br9"}
    device = parse_args(["init", "--auto", "--storage-backend", "btrfs",
                         "--storage-create-device", "/dev/vdb"])
    assert init_body(device) == {"storage_backend": "btrfs", "storage_path": "/dev/vdb"}
    assert init_body(parse_args(["init", "--auto"])) == {}
