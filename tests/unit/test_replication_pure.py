"""The pure parts of volume replication: snapshot names, the stream framing, the dir
manifest's choice of what a delta carries, and what tar's listing says it archived."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_agent.replication.errors import BadStream
from node_agent.replication.framing import (
    MAGIC,
    Decoder,
    FrameWriter,
    Header,
    StreamReader,
    encode_end,
    encode_frame,
    encode_header,
)
from node_agent.replication.names import (
    is_snapshot_name,
    moment_ns,
    next_snapshot_name,
    snapshot_name,
    to_drop,
)
from node_agent.storage import manifest
from node_agent.storage.manifest import Entry
from node_agent.storage.tar_output import split_listing, unquote

moments = st.integers(min_value=0, max_value=10**20 - 1)
names = moments.map(snapshot_name)

# names ---------------------------------------------------------------------------------


@given(moments)
def test_a_name_encodes_its_moment_and_sorts_by_it(ns: int) -> None:
    name = snapshot_name(ns)
    assert is_snapshot_name(name) and moment_ns(name) == ns and len(name) == 21
    if ns > 0:
        assert snapshot_name(ns - 1) < name


@pytest.mark.parametrize("bad", ["", "r1", "r" + "0" * 19 + "x", "s" + "0" * 20,
                                 "r" + "0" * 21, "../r" + "0" * 20, None, 5])
def test_other_strings_are_not_snapshot_names(bad: object) -> None:
    assert not is_snapshot_name(bad)


@given(moments, st.lists(st.integers(0, 10**20 - 2).map(snapshot_name), max_size=5))
def test_a_new_name_is_later_than_every_existing_even_if_the_clock_stepped_back(
        now: int, existing: list[str]) -> None:
    name = next_snapshot_name(now, existing)
    assert all(name > old for old in existing) and moment_ns(name) >= now


@given(st.lists(names, max_size=8), st.integers(min_value=0, max_value=4),
       st.lists(names, max_size=2))
def test_to_drop_keeps_the_newest_and_the_asked_for(snaps: list[str], keep: int,
                                                    also: list[str]) -> None:
    dropped = to_drop([*snaps, "not-a-snapshot"], keep, [*also, None])
    kept = set(snaps) - set(dropped)
    assert dropped == sorted(dropped) and set(dropped) <= set(snaps)
    assert set(sorted(set(snaps))[-keep:] if keep else []) <= kept
    assert not set(also) & set(dropped)
    assert len(kept - set(also)) <= keep


# framing -------------------------------------------------------------------------------

headers = st.builds(Header, kind=st.sampled_from(["dir", "btrfs"]), uid=st.text(max_size=40),
                    parent=st.none() | names, snapshot=names, removed=st.binary(max_size=300))
payloads = st.lists(st.binary(min_size=1, max_size=200), max_size=6)


def _stream(header: Header, pieces: list[bytes]) -> bytes:
    return (encode_header(header) + b"".join(encode_frame(p) for p in pieces)
            + encode_end(sum(map(len, pieces))))


def _cuts(data: bytes, points: list[int]) -> list[bytes]:
    at = sorted({min(p, len(data)) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(at, at[1:], strict=False)]


@given(headers, payloads, st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_a_stream_decodes_the_same_however_it_is_cut_into_chunks(
        header: Header, pieces: list[bytes], points: list[int]) -> None:
    decoder, got = Decoder(), b""
    for chunk in _cuts(_stream(header, pieces), points):
        got += b"".join(decoder.feed(chunk))
    assert decoder.header == header and decoder.done and got == b"".join(pieces)


@given(headers, payloads, st.data())
def test_a_cut_stream_is_never_done(header: Header, pieces: list[bytes],
                                    data: st.DataObject) -> None:
    whole = _stream(header, pieces)
    cut = data.draw(st.integers(min_value=0, max_value=len(whole) - 1))
    decoder = Decoder()
    decoder.feed(whole[:cut])
    assert not decoder.done


@given(headers, payloads, st.binary(min_size=1, max_size=10))
def test_bytes_after_the_end_mark_are_refused(header: Header, pieces: list[bytes],
                                              extra: bytes) -> None:
    with pytest.raises(BadStream):
        Decoder().feed(_stream(header, pieces) + extra)


def test_garbage_bad_headers_and_a_wrong_total_are_refused() -> None:
    header = Header("dir", "u", None, snapshot_name(5))
    with pytest.raises(BadStream, match="not a replica"):
        Decoder().feed(b"\x1f\x8b\x08\x00")  # a gzip, say
    with pytest.raises(BadStream):
        Decoder().feed(MAGIC + (7).to_bytes(4, "big") + b"{nope}!")
    with pytest.raises(BadStream):
        Decoder().feed(MAGIC + (9).to_bytes(4, "big") + b'{"v": 99}')
    with pytest.raises(BadStream, match="end mark"):
        Decoder().feed(encode_header(header) + encode_frame(b"abc") + encode_end(4))
    assert Decoder().feed(MAGIC[:2]) == []  # a prefix of the magic waits for more


@given(headers, payloads, st.booleans())
def test_the_reader_and_writer_agree_and_a_cut_is_an_error(
        header: Header, pieces: list[bytes], cut: bool) -> None:
    async def run() -> tuple[bytes, int, int]:
        sent: list[bytes] = []

        async def write(data: bytes) -> None:
            sent.append(data)

        out = FrameWriter(write)
        await out.header(header)
        for piece in pieces:
            await out.payload(piece)
        if not cut:
            await out.end()

        async def chunks() -> AsyncIterator[bytes]:
            for data in sent:
                yield data

        reader = StreamReader(chunks())
        assert await reader.header() == header
        got = b"".join([p async for p in reader.payload()])
        return got, reader.received, out.sent

    if cut:
        with pytest.raises(BadStream, match="cut short"):
            asyncio.run(run())
        return
    got, received, sent = asyncio.run(run())
    assert got == b"".join(pieces) and received == sent


# manifest ------------------------------------------------------------------------------

paths = st.lists(st.binary(min_size=1, max_size=12).filter(lambda p: b"\0" not in p),
                 unique=True, max_size=8)


@given(paths, st.data())
def test_a_manifest_round_trips(rel: list[bytes], data: st.DataObject) -> None:
    entries = [Entry(p, data.draw(st.sampled_from([b"d", b"l", b"f"])),
                     data.draw(st.integers(0, 2**64 - 1)),
                     data.draw(st.integers(-(2**63), 2**63 - 1))) for p in rel]
    assert manifest.decode(manifest.encode(entries)) == {
        e.key: (e.ino, e.ctime_ns) for e in entries}


def test_a_damaged_manifest_is_refused() -> None:
    good = manifest.encode([Entry(b"rootfs", b"d", 5, 6)])
    for bad in (good[:-1], good[:5], good[:16] + b"\x00\x00\x00\x07x" + good[21:],
                good[:20] + b"q" + good[21:]):
        with pytest.raises(ValueError):
            manifest.decode(bad)


S = 10**9 * 1000  # the parent's moment: 1000 s


def _parent(entries: list[Entry]) -> dict[bytes, tuple[int, int]]:
    return manifest.decode(manifest.encode(entries))


def test_a_delta_carries_changed_new_and_replaced_paths_but_not_unchanged_ones() -> None:
    old = S - 60 * 10**9
    before = [Entry(b".", b"d", 1, old), Entry(b"a", b"f", 2, old),
              Entry(b"d", b"d", 3, old), Entry(b"d/x", b"f", 4, old),
              Entry(b"keep", b"f", 5, old), Entry(b"swap", b"d", 6, old),
              Entry(b"swap/y", b"f", 7, old)]
    after = [Entry(b".", b"d", 1, old),
             Entry(b"a", b"f", 2, S + 5),  # written since
             Entry(b"moved", b"d", 3, S + 5), Entry(b"moved/x", b"f", 4, old),  # d moved
             Entry(b"keep", b"f", 5, old),
             Entry(b"swap", b"d", 16, S + 5), Entry(b"swap/y", b"f", 17, old)]  # swapped in
    chosen = manifest.to_send(after, _parent(before), S)
    assert chosen == [b".", b"a", b"moved", b"moved/x", b"swap", b"swap/y"]
    assert manifest.to_send(after, None, None) == [e.path for e in after]
    assert manifest.removed(after, _parent(before)).split(b"\0") == [b"dd", b"fd/x"]
    assert manifest.split_removed(manifest.removed(after, _parent(before))) == [
        (b"d", b"d"), (b"f", b"d/x")]


def test_a_change_just_before_the_parent_moment_is_sent_again() -> None:
    entry = Entry(b"log", b"f", 9, S - manifest.SLACK_NS // 2)
    assert manifest.to_send([entry], _parent([entry]), S) == [b"log"]
    older = Entry(b"log", b"f", 9, S - 2 * manifest.SLACK_NS)
    assert manifest.to_send([older], _parent([older]), S) == []


def test_every_name_of_a_hard_linked_file_goes_with_it() -> None:
    old = S - 60 * 10**9
    before = [Entry(b"a", b"f", 7, old, 2), Entry(b"b", b"f", 7, old, 2)]
    after = [Entry(b"a", b"f", 7, old, 2), Entry(b"sub", b"d", 8, S + 1),
             Entry(b"sub/b", b"f", 7, old, 2)]  # b moved into a new directory
    assert manifest.to_send(after, _parent(before), S) == [b"a", b"sub", b"sub/b"]


@pytest.mark.parametrize("bad", [b"f/etc/passwd", b"frootfs/../../x", b"d.", b"frootfs//x",
                                 b"xrootfs/a", b"frootfs/./a", b"f"])
def test_a_removal_that_could_leave_the_volume_is_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        manifest.split_removed(b"drootfs/ok\0" + bad)


def test_what_tar_found_but_the_walk_did_not_is_sent_again_or_deleted_next_time() -> None:
    old = S - 60 * 10**9
    walked = [Entry(b".", b"d", 1, old), Entry(b"a", b"f", 2, old), Entry(b"l", b"l", 3, old)]
    archived = [(b"a", False), (b"l", False), (b"late", True), (b"late/x", False),
                (b"gone", False)]
    kept = manifest.with_archived(walked, archived)
    assert kept[:3] == walked  # the walk's own entries stay as they were
    # what tar archived may have changed kind since the walk (but for a directory)
    assert {e.key for e in kept[3:]} == {b"la", b"fl", b"dlate", b"flate/x", b"llate/x",
                                         b"fgone", b"lgone"}
    assert all(e.ino == 0 for e in kept[3:])
    parent = _parent(kept)
    now = [Entry(b".", b"d", 1, old), Entry(b"a", b"f", 2, old), Entry(b"l", b"l", 3, old),
           Entry(b"late", b"d", 4, old), Entry(b"late/x", b"f", 5, old)]
    assert manifest.to_send(now, parent, S) == [b".", b"late", b"late/x"]
    assert manifest.split_removed(manifest.removed(now, parent)) == [
        (b"l", b"a"), (b"f", b"gone"), (b"l", b"gone"), (b"f", b"l"), (b"l", b"late/x")]


names_in_a_volume = st.lists(st.binary(min_size=1, max_size=4).filter(
    lambda n: b"\0" not in n and b"/" not in n and n not in (b".", b"..")),
    min_size=1, max_size=3).map(b"/".join)


@given(st.lists(st.tuples(names_in_a_volume, st.booleans()), max_size=8),
       st.lists(names_in_a_volume, unique=True, max_size=8))
def test_a_path_tar_archived_is_deleted_once_the_walk_lacks_it_whatever_its_kind(
        archived: list[tuple[bytes, bool]], later: list[bytes]) -> None:
    kept = manifest.with_archived([Entry(b".", b"d", 1, S)], archived)
    now = [Entry(b".", b"d", 1, S), *(Entry(p, b"f", 9, S) for p in later)]
    doomed = set(manifest.removed(now, _parent(kept)).split(b"\0"))
    for path, directory in archived:
        for kind in (b"d",) if directory else (b"f", b"l"):
            assert kind + path in doomed or (kind == b"f" and path in later)


# tar's listing -------------------------------------------------------------------------


def test_tar_s_listing_gives_the_archived_paths_and_keeps_its_diagnostics_apart() -> None:
    # as GNU tar 1.34 wrote it (--verbose --quoting-style=escape, LC_ALL=C)
    stderr = (b"./\n./rootfs/\n./rootfs/etc/b\n./rootfs/l\n"
              b"tar: ./rootfs/sock: socket ignored\n./rootfs/d/\n./rootfs/d/nl\\nx\n"
              b"./rootfs/d/\\001ctl\n./rootfs/d/\\303\\251\n./rootfs/d/sp \n"
              b"./rootfs/d/q?\"*[\n./rootfs/d/back\\\\sl\n./rootfs/d/tail\\\\/\n")
    archived, said = split_listing(stderr)
    assert archived == [(b"rootfs", True), (b"rootfs/etc/b", False), (b"rootfs/l", False),
                        (b"rootfs/d", True), (b"rootfs/d/nl\nx", False),
                        (b"rootfs/d/\x01ctl", False), (b"rootfs/d/\xc3\xa9", False),
                        (b"rootfs/d/sp ", False), (b"rootfs/d/q?\"*[", False),
                        (b"rootfs/d/back\\sl", False), (b"rootfs/d/tail\\", True)]
    assert said == b"tar: ./rootfs/sock: socket ignored"
    assert unquote(b"\\a\\b\\f\\r\\t\\v\\377") == b"\a\b\f\r\t\v\xff"


@pytest.mark.parametrize("bad", [b"./x\\", b"./x\\q", b"./x\\400", b"./x\\4"])
def test_a_listed_name_tar_would_not_have_written_is_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        split_listing(b"./\n" + bad + b"\n")
