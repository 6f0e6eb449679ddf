"""What the delta of a move's pre-copy carries (``storage/transfer.py``) and what a read
of a changing tree is known to have read (``manifest.settled``): pure parts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_agent.storage import manifest
from node_agent.storage.manifest import SLACK_NS, Entry
from node_agent.storage.tar_output import unexpected_warnings
from node_agent.storage.transfer import Basis, exact_pattern, is_private, skippable

S = 10**9 * 1000  # the moment the read began: 1000 s
OLD = S - 60 * 10**9


def _tree() -> list[Entry]:
    return [Entry(b".", b"d", 1, OLD), Entry(b"etc", b"d", 2, OLD),
            Entry(b"etc/hostname", b"f", 3, OLD), Entry(b"var", b"d", 4, OLD),
            Entry(b"var/log", b"d", 5, OLD), Entry(b"var/log/syslog", b"f", 6, OLD)]


def _paths(entries: list[Entry]) -> list[bytes]:
    return [e.path for e in entries]


def test_a_tree_unchanged_during_the_read_is_settled_whole() -> None:
    assert manifest.settled(_tree(), _tree(), S) == _tree()


def test_a_directory_moved_away_and_back_during_the_read_settles_nothing_below_it() -> None:
    after = [e if e.path != b"var" else Entry(b"var", b"d", 4, S + 5) for e in _tree()]
    assert _paths(manifest.settled(_tree(), after, S)) == [b".", b"etc", b"etc/hostname"]


def test_a_path_that_vanished_or_changed_during_the_read_is_not_settled() -> None:
    after = [e for e in _tree() if e.path != b"etc/hostname"]
    after[-1] = Entry(b"var/log/syslog", b"f", 6, S + 5)
    assert _paths(manifest.settled(_tree(), after, S)) == [b".", b"etc", b"var", b"var/log"]
    swapped = [e if e.path != b"etc" else Entry(b"etc", b"l", 2, OLD) for e in _tree()]
    assert b"etc/hostname" not in _paths(manifest.settled(_tree(), swapped, S))


def test_below_a_directory_changed_just_before_the_read_nothing_is_settled() -> None:
    """A change in the same clock tick as the directory's last one would not show."""
    before = [e if e.path != b"var/log" else Entry(b"var/log", b"d", 5, S - SLACK_NS // 2)
              for e in _tree()]
    assert _paths(manifest.settled(before, before, S)) == [
        b".", b"etc", b"etc/hostname", b"var", b"var/log"]


entries = st.builds(Entry, st.sampled_from([b".", b"a", b"a/b", b"a/b/c", b"d", b"d/e"]),
                    st.sampled_from([b"d", b"f", b"l"]), st.integers(1, 3),
                    st.sampled_from([OLD, S - SLACK_NS // 2, S + 1]))


def _walk_order(found: list[Entry]) -> list[Entry]:
    """``found`` as a walk would give it: one entry a path, each below a directory
    walked before it."""
    unique = {e.path: e for e in found}
    walk: list[Entry] = []
    directories: set[bytes] = set()
    for e in sorted(unique.values(), key=lambda e: e.path.split(b"/")):
        parent = e.path.rpartition(b"/")[0] or b"."
        if e.path == b"." or parent in directories:
            walk.append(e)
            if e.kind == b"d":
                directories.add(e.path)
    return walk


@given(st.lists(entries), st.lists(entries))
def test_a_settled_path_and_every_directory_above_it_are_unchanged(
        before: list[Entry], after: list[Entry]) -> None:
    before = _walk_order(before)
    got = manifest.settled(before, after, S)
    now = {(e.key, e.ino, e.ctime_ns) for e in after}
    directories = {e.path: e for e in before if e.kind == b"d"}
    for e in got:
        assert e in before and (e.key, e.ino, e.ctime_ns) in now
        parts = e.path.split(b"/")
        above = [b"/".join(parts[:i]) for i in range(1, len(parts))]
        if e.path != b".":
            above.append(b".")
        for path in above:
            if path in directories:
                d = directories[path]
                assert d in got and d.ctime_ns < S - SLACK_NS


def test_a_manifest_seen_from_above_names_pool_paths() -> None:
    prefixed = manifest.under(_tree(), b"containers/c1")
    assert _paths(prefixed)[:3] == [b"containers/c1", b"containers/c1/etc",
                                    b"containers/c1/etc/hostname"]
    held = manifest.decode(manifest.encode(_tree()))
    assert manifest.held_under(held, b"containers/c1") == manifest.decode(
        manifest.encode(prefixed))


def test_a_basis_round_trips_and_a_damaged_one_is_refused() -> None:
    basis = Basis(manifest.decode(manifest.encode(_tree())), S)
    assert Basis.decode(basis.encode()) == basis
    for bad in (b"", b"x\n", basis.encode()[:-1]):
        with pytest.raises(ValueError):
            Basis.decode(bad)


def test_only_the_spare_manifest_at_the_top_of_a_volume_is_private() -> None:
    assert is_private(b"containers/c1/.baseline-manifest")
    assert not is_private(b"containers/c1/rootfs/.baseline-manifest")
    assert not is_private(b"containers-snapshots/c1/s0/.baseline-manifest")
    assert not is_private(b"containers/c1/.baseline")


@pytest.mark.parametrize(("path", "exact"), [
    (b"containers/c1/rootfs/a", True), (b"containers/c1/rootfs/st*r [x]", True),
    (b"containers/c1/rootfs/b ", False), (b"containers/c1/rootfs/b\t", False),
    (b"containers/c1/rootfs/a\nb", False), (b"containers/c1/rootfs/back\\slash", False)])
def test_a_file_is_left_out_by_name_only_where_tar_reads_the_name_back_exactly(
        path: bytes, exact: bool) -> None:
    assert exact_pattern(path) is exact


def test_a_send_leaves_out_only_unchanged_files_and_never_half_a_hard_link() -> None:
    held = [Entry(b"v", b"d", 1, OLD), Entry(b"v/same", b"f", 2, OLD),
            Entry(b"v/new-name", b"f", 3, OLD),
            Entry(b"v/a", b"f", 4, OLD, 2), Entry(b"v/b ", b"f", 4, OLD, 2),
            Entry(b"v/c", b"f", 5, OLD, 2), Entry(b"v/d", b"f", 5, OLD, 2)]
    basis = Basis(manifest.decode(manifest.encode(held)), S)
    now = [Entry(b"v", b"d", 1, S + 1), Entry(b"v/same", b"f", 2, OLD),
           Entry(b"v/moved", b"f", 3, OLD),  # renamed: a new path
           Entry(b"v/a", b"f", 4, OLD, 2), Entry(b"v/b ", b"f", 4, OLD, 2),
           Entry(b"v/c", b"f", 5, OLD, 2), Entry(b"v/d", b"f", 5, OLD, 2)]
    # "v/b " cannot be excluded by name, so its link "v/a" goes too; the directory always.
    assert skippable(now, basis) == [b"v/same", b"v/c", b"v/d"]


def test_only_a_tree_changing_under_tar_is_a_harmless_warning() -> None:
    harmless = (b"tar: containers/c1/rootfs/var/log/x: file changed as we read it\n"
                b"tar: containers/c1/rootfs/tmp/a: File removed before we read it\n"
                b"tar: containers/c1/rootfs/run/s: socket ignored\n"
                b"tar: containers/c1/rootfs/t: File shrank by 12 bytes; padding with zeros\n"
                b"tar: containers/c1/rootfs/tmp/b: Warning: Cannot stat: No such file or "
                b"directory\n"
                b"tar: containers/c1/rootfs/tmp/c: Warning: Cannot open: Not a directory\n")
    assert unexpected_warnings(harmless) == []
    bad = [b"tar: containers/c1/rootfs/x: Warning: Cannot open: Input/output error",
           b"tar: containers/c1/rootfs/y: Read error at byte 0, while reading 512 bytes: "
           b"Input/output error"]
    assert unexpected_warnings(harmless + b"\n".join(bad)) == bad
