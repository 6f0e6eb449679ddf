"""The CLI's own HTTP/1.1 client: response framing, and one keep-alive connection to a
real aiohttp server on a unix socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from corral_cli.http1 import (
    Connection,
    Headers,
    ProtocolError,
    encode_request,
    read_reply,
    request_target,
)


def reader_of(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_a_content_length_body_is_read_exactly_and_keeps_the_connection() -> None:
    reader = reader_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: x1\r\n\r\nhelloNEXT")
    reply, reusable = await read_reply(reader, "GET")
    assert (reply.status, reply.body, reusable) == (200, b"hello", True)
    assert reply.headers["etag"] == reply.headers.get("ETag") == "x1"
    assert "Etag" in reply.headers and "Missing" not in reply.headers
    assert await reader.read() == b"NEXT"  # the next response is left in place


async def test_a_chunked_body_is_joined_with_its_extensions_and_trailers_skipped() -> None:
    data = (b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4;ext=1\r\nwiki\r\n6\r\npedia \r\n0\r\nTrailer: t\r\n\r\n")
    reply, reusable = await read_reply(reader_of(data), "POST")
    assert (reply.status, reply.body, reusable) == (202, b"wikipedia ", True)


async def test_without_a_length_the_body_runs_to_the_end_and_the_connection_closes() -> None:
    reply, reusable = await read_reply(reader_of(b"HTTP/1.1 200 OK\r\n\r\nall of it"), "GET")
    assert (reply.body, reusable) == (b"all of it", False)


async def test_connection_close_and_http_1_0_are_not_reused() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert (await read_reply(reader_of(closing), "GET"))[1] is False
    old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert (await read_reply(reader_of(old), "GET"))[1] is False


async def test_no_body_is_read_for_head_204_and_304() -> None:
    for method, head in (("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
                         ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
                         ("GET", b"HTTP/1.1 304 Not Modified\r\n\r\n")):
        reply, reusable = await read_reply(reader_of(head), method)
        assert (reply.body, reusable) == (b"", True)


@pytest.mark.parametrize("data", [
    b"", b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.1 OK fine\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
async def test_what_is_not_http_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        await read_reply(reader_of(data), "GET")


async def test_a_truncated_body_is_an_incomplete_read() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        await read_reply(reader_of(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"), "GET")


def test_request_encoding_adds_host_and_length_and_keeps_given_headers() -> None:
    raw = encode_request("PUT", "/1.0/x?a=1", "unix.socket", {"If-Match": "e"}, b"{}")
    assert raw == (b"PUT /1.0/x?a=1 HTTP/1.1\r\nHost: unix.socket\r\nIf-Match: e\r\n"
                   b"Content-Length: 2\r\n\r\n{}")
    assert b"Content-Length" not in encode_request("GET", "/", "h", {}, b"")
    assert b"Content-Length: 0" in encode_request("POST", "/", "h", {}, b"")
    given = encode_request("POST", "/", "h", {"content-length": "2"}, b"ab")
    assert given.count(b"ength") == 1


def test_params_are_appended_url_encoded() -> None:
    assert request_target("/1.0/x", None) == "/1.0/x"
    assert request_target("/f", {"path": "/a b&c"}) == "/f?path=%2Fa+b%26c"
    assert request_target("/f?recursion=1", {"t": "1"}) == "/f?recursion=1&t=1"


def test_headers_match_any_case() -> None:
    headers = Headers([("Content-Type", "text/plain")])
    assert headers["content-type"] == headers["CONTENT-TYPE"] == "text/plain"
    assert headers.get("nope") is None and headers.get("nope", "d") == "d"


async def test_one_connection_carries_requests_and_reopens_after_the_server_closes(
        tmp_path: Path) -> None:
    peers: list[object] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport)
        body = await request.read()
        if request.path == "/close":
            return web.Response(text="bye", headers={"Connection": "close"})
        if request.path == "/stream":
            response = web.StreamResponse()
            await response.prepare(request)
            for part in (b"a", b"b", b"c"):
                await response.write(part)
            await response.write_eof()
            return response
        return web.json_response({"method": request.method, "query": dict(request.query),
                                  "body": body.decode()})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    socket = str(tmp_path / "s.sock")
    await web.UnixSite(runner, socket).start()
    connection = Connection(socket)
    try:
        first = await connection.request("POST", "/x?k=v", {}, b"data")
        assert first.status == 200
        assert first.body == b'{"method": "POST", "query": {"k": "v"}, "body": "data"}'
        assert (await connection.request("GET", "/stream", {})).body == b"abc"
        assert peers[0] is peers[1]  # kept alive
        assert (await connection.request("GET", "/close", {})).body == b"bye"
        assert (await connection.request("GET", "/y", {})).status == 200
        assert peers[3] is not peers[2]  # reopened after the server's close
    finally:
        await connection.close()
        await runner.cleanup()
    with pytest.raises(FileNotFoundError):
        await Connection(str(tmp_path / "absent.sock")).request("GET", "/", {})


async def test_a_request_the_server_dropped_unanswered_is_resent_only_if_idempotent(
        tmp_path: Path) -> None:
    """The server answers the first request on each connection and drops the second
    unanswered (as at the end of a keep-alive timeout)."""
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answered in (True, False):
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head.split(b" ", 1)[0].decode())
            if answered:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    socket = str(tmp_path / "s.sock")
    server = await asyncio.start_unix_server(serve, socket)
    connection = Connection(socket)
    try:
        assert (await connection.request("GET", "/a", {})).body == b"ok"
        assert (await connection.request("GET", "/b", {})).body == b"ok"  # sent again
        assert seen == ["GET", "GET", "GET"]
        with pytest.raises(ProtocolError):
            await connection.request("POST", "/c", {}, b"x")  # never sent twice
        assert seen == ["GET", "GET", "GET", "POST"]
    finally:
        await connection.close()
        server.close()
        await server.wait_closed()
