"""The payload of a VM replica stream (``replication/parts.py``): named files in a row,
read back only whole, only under names the reader expects, each once."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.replication.errors import BadStream
from node_agent.replication.parts import part_header, read_parts, write_parts

NAMES = ("root.qcow2", "OVMF_VARS.fd")


def _payload(tmp: Path, contents: dict[str, bytes]) -> bytes:
    files = []
    for name, data in contents.items():
        (tmp / f"src-{name}").write_bytes(data)
        files.append((name, tmp / f"src-{name}"))
    out = io.BytesIO()
    assert write_parts(out, files) == sum(len(d) for d in contents.values())
    return out.getvalue()


@settings(max_examples=40, deadline=None)
@given(disk=st.binary(max_size=3000), nvram=st.none() | st.binary(max_size=200),
       cut=st.integers(min_value=1))
def test_parts_read_back_whole_and_a_cut_one_is_refused(
        tmp_path_factory: pytest.TempPathFactory, disk: bytes, nvram: bytes | None,
        cut: int) -> None:
    tmp = tmp_path_factory.mktemp("parts")
    contents = {"root.qcow2": disk, **({} if nvram is None else {"OVMF_VARS.fd": nvram})}
    payload = _payload(tmp, contents)
    into = tmp / "whole"
    into.mkdir()
    assert read_parts(io.BytesIO(payload), into, NAMES) == list(contents)
    assert {p.name: p.read_bytes() for p in into.iterdir()} == contents
    at = cut % len(payload)
    between = {0, len(part_header("root.qcow2", len(disk))) + len(disk)}
    if at in between:
        return  # a cut between parts looks like a shorter payload: the framing tells
    cut_into = tmp / "cut"
    cut_into.mkdir()
    with pytest.raises(BadStream):
        read_parts(io.BytesIO(payload[:at]), cut_into, NAMES)


def test_unexpected_or_repeated_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"data")
    for files in ([("../escape", tmp_path / "x")], [("root.qcow2", tmp_path / "x")] * 2):
        out = io.BytesIO()
        write_parts(out, files)
        into = tmp_path / f"into{len(files)}"
        into.mkdir()
        with pytest.raises(BadStream):
            read_parts(io.BytesIO(out.getvalue()), into, NAMES)
        assert not (tmp_path / "escape").exists()
