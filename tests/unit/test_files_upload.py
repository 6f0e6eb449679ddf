"""Streaming uploads into a rootfs: chunked bodies, the size cap, and undo on failure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from cluster.api.handlers import files
from cluster.api.handlers.files import Target
from cluster.api.response import ApiError


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    (tmp_path / "etc").mkdir()
    target = Target(tmp_path, 0, 0, 0)

    async def upload(request: web.Request) -> web.Response:
        try:
            await files._write_file(request, target, request.query["path"],
                                    request.query.get("append") == "1", -1, -1, -1)
        except ApiError as exc:
            return web.Response(status=exc.status, text=exc.message)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/upload", upload)
    test_client = TestClient(TestServer(app))
    await test_client.start_server()
    yield test_client
    await test_client.close()


async def chunks(count: int, size: int) -> AsyncIterator[bytes]:
    for i in range(count):
        yield bytes([65 + i % 26]) * size


async def test_chunked_body_is_streamed_to_the_file(
        client: TestClient[web.Request, web.Application], tmp_path: Path) -> None:
    resp = await client.post("/upload?path=/etc/big", data=chunks(40, 100_000))
    assert resp.status == 200
    data = (tmp_path / "etc" / "big").read_bytes()
    assert len(data) == 4_000_000 and data[:1] == b"A" and data[-1:] == b"N"
    assert (tmp_path / "etc" / "big").stat().st_mode & 0o777 == 0o644
    resp = await client.post("/upload?path=/etc/big&append=1", data=b"!")
    assert resp.status == 200 and (tmp_path / "etc" / "big").stat().st_size == 4_000_001


async def test_body_over_the_cap_is_refused_and_the_new_file_removed(
        client: TestClient[web.Request, web.Application], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "MAX_UPLOAD", 1_000_000)
    resp = await client.post("/upload?path=/etc/huge", data=chunks(30, 100_000))
    assert resp.status == 413
    assert not (tmp_path / "etc" / "huge").exists()
    resp = await client.post("/upload?path=/etc/huge", data=b"x" * 2_000_000)  # by length
    assert resp.status == 413 and not (tmp_path / "etc" / "huge").exists()


async def test_missing_parent_is_404(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.post("/upload?path=/nope/f", data=b"x")
    assert (resp.status, await resp.text()) == (404, "Path not found")


@pytest.mark.parametrize("raw,mode", [("0644", 0o644), ("644", 0o644), ("0o750", 0o750),
                                      ("04755", 0o755), ("", -1), ("rwx", -1)])
async def test_mode_header_is_octal(raw: str, mode: int) -> None:
    request = make_mocked_request("POST", "/", headers={"X-LXD-mode": raw})
    assert files._mode_header(request) == mode


def test_ids_shift_and_unmapped_ids_show_as_overflow() -> None:
    target = Target(Path("/"), 1_000_000, 1_000_000, 65536)
    assert target.to_host(0, target.uid_shift) == 1_000_000
    assert target.to_host(-1, target.uid_shift) == -1
    assert target.to_container(1_000_033, target.uid_shift) == 33
    assert target.to_container(0, target.uid_shift) == files.OVERFLOW_ID
    with pytest.raises(ApiError):
        target.to_host(65536, target.uid_shift)
    assert Target(Path("/"), 0, 0, 0).to_container(5, 0) == 5
