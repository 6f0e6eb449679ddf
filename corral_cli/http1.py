"""A minimal HTTP/1.1 client for the CLI's plain requests.

Importing aiohttp costs ~0.3 s (its connector builds two TLS contexts as it loads): most
of what a command like ``corral list`` spent. Requests whose bodies are bytes or absent
(all JSON calls and operation waits) go through this instead, on one keep-alive
connection to the unix socket or, for a remote, over TLS; streamed bodies and websockets
still use aiohttp, imported only by the commands that need them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

MAX_HEADER_LINES = 100
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class ProtocolError(ConnectionError):
    """The server's answer is not HTTP/1.1 as this client reads it."""


class ClosedBeforeAnswer(ProtocolError):
    """The connection ended before a byte of the answer came (a kept-alive connection the
    server had just closed: the request may be sent again on a new one)."""


class Headers(dict[str, str]):
    """Response headers, looked up without regard to case (as HTTP says)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__((key.lower(), value) for key, value in items)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass
class Reply:
    status: int
    headers: Headers
    body: bytes


def request_target(path: str, params: Mapping[str, str] | None) -> str:
    """``path`` with ``params`` appended as a query string (after any it already has)."""
    if not params:
        return path
    return f"{path}{'&' if '?' in path else '?'}{urlencode(params)}"


def encode_request(method: str, target: str, host: str, headers: Mapping[str, str],
                   body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    sent = {key.lower() for key in headers}
    lines += [f"{key}: {value}" for key, value in headers.items()]
    if "content-length" not in sent and (body or method in ("POST", "PUT", "PATCH")):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_reply(reader: asyncio.StreamReader, method: str) -> tuple[Reply, bool]:
    """One response and whether the connection may carry another."""
    status_line = (await reader.readline()).decode("latin-1")
    if not status_line:
        raise ClosedBeforeAnswer("the server closed the connection without answering")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"unexpected answer: {status_line.strip()!r}")
    status = int(parts[1])
    items = []
    for _ in range(MAX_HEADER_LINES):
        line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            break
        key, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line: {line!r}")
        items.append((key.strip(), value.strip()))
    else:
        raise ProtocolError("too many header lines")
    headers = Headers(items)
    reusable = ((headers.get("Connection") or "").lower() != "close"
                and not parts[0].startswith("HTTP/1.0"))
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        body = await _read_chunked(reader)
    elif "Content-Length" in headers:
        body = await reader.readexactly(int(headers["Content-Length"]))
    else:
        body, reusable = await reader.read(), False
    return Reply(status, headers, body), reusable


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_line = (await reader.readline()).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError as exc:
            raise ProtocolError(f"bad chunk size: {size_line!r}") from exc
        if size == 0:
            while (await reader.readline()).strip():  # trailers, then the blank line
                pass
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)  # CRLF after each chunk


class Connection:
    """One keep-alive connection, opened on first use and again after the server closed it.

    ``url`` is ``https://host:port`` for a remote (with ``ssl_context``), or None for the
    unix ``socket``.
    """

    def __init__(self, socket: str, url: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.socket = socket
        self.ssl_context = ssl_context
        self.url = urlsplit(url) if url else None
        self.host = self.url.netloc if self.url else "unix.socket"
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.url is None:
            return await asyncio.open_unix_connection(self.socket)
        return await asyncio.open_connection(
            self.url.hostname, self.url.port or 443, ssl=self.ssl_context,
            server_hostname=self.url.hostname if self.ssl_context else None)

    async def request(self, method: str, target: str, headers: Mapping[str, str],
                      body: bytes = b"") -> Reply:
        """Send one request and read its answer. On a kept-alive connection the server
        may have closed just before: an idempotent request is then sent once more."""
        reused = self._streams is not None and not self._streams[0].at_eof()
        try:
            return await self._exchange(method, target, headers, body)
        except (ClosedBeforeAnswer, ConnectionResetError, BrokenPipeError):
            if not reused or method not in IDEMPOTENT:
                raise
        return await self._exchange(method, target, headers, body)

    async def _exchange(self, method: str, target: str, headers: Mapping[str, str],
                        body: bytes) -> Reply:
        if self._streams is None or self._streams[0].at_eof():
            await self.close()
            self._streams = await self._open()
        reader, writer = self._streams
        try:
            writer.write(encode_request(method, target, self.host, headers, body))
            await writer.drain()
            reply, reusable = await read_reply(reader, method)
        except asyncio.IncompleteReadError as exc:
            await self.close()
            raise ProtocolError("the server closed the connection mid-answer") from exc
        except BaseException:
            await self.close()
            raise
        if not reusable:
            await self.close()
        return reply

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):  # already gone: nothing to close
                pass
