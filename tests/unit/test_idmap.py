"""Root's subordinate id range: parsing /etc/subuid and reserving a range once."""

from __future__ import annotations

from pathlib import Path

from node_agent.idmap import IdMap, ensure_root_idmap, parse_subid, pick_range


def test_only_roots_well_formed_ranges_are_read() -> None:
    text = "alice:100000:65536\nroot:1000000:1000000000\n0:5:70000\nroot:x:1\nroot:1:0\n#c\n"
    assert parse_subid(text) == [(1_000_000, 1_000_000_000), (5, 70_000)]


def test_a_range_smaller_than_65536_is_not_enough() -> None:
    assert pick_range([(100, 1000), (200000, 65536)]) == (200000, 65536)
    assert pick_range([(100, 1000)]) is None


def test_missing_files_get_lxds_default_range(tmp_path: Path) -> None:
    uid, gid = tmp_path / "subuid", tmp_path / "subgid"
    assert ensure_root_idmap(uid, gid) == IdMap(1_000_000, 1_000_000_000, 1_000_000,
                                                1_000_000_000)
    assert uid.read_text() == "root:1000000:1000000000\n"
    ensure_root_idmap(uid, gid)
    assert uid.read_text() == "root:1000000:1000000000\n", "appended only once"


def test_an_existing_range_is_used_and_other_lines_kept(tmp_path: Path) -> None:
    uid, gid = tmp_path / "subuid", tmp_path / "subgid"
    uid.write_text("alice:100000:65536\nroot:300000:131072")
    gid.write_text("root:100:10\n")
    idmap = ensure_root_idmap(uid, gid)
    assert idmap == IdMap(300000, 131072, 1_000_000, 1_000_000_000)
    assert uid.read_text() == "alice:100000:65536\nroot:300000:131072"
    assert gid.read_text() == "root:100:10\nroot:1000000:1000000000\n"
