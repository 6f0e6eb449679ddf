"""Stream an API request to another cluster member over the cluster's mutual TLS.

Instance-local actions (exec, files, logs, live state) and operations run on the member
that hosts them (DESIGN §1); the member a client happens to call relays the request::

    client ──HTTP/ws──> this member ──HTTPS/wss, cluster certificate──> hosting member

Members share one cluster certificate: this member presents ``server.crt``/``server.key``
as its client certificate and accepts only that same certificate from the target. The
relayed request carries ``X-Corral-Forwarded: 1``, so the target never relays it again
(a stale location cannot make two members bounce a request between them).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy

from cluster.api.response import ApiError
from cluster.transport.peers import APPLIED_HEADER, ClusterTLS

FORWARDED_HEADER = "X-Corral-Forwarded"
CHUNK = 256 * 1024
CONNECT_TIMEOUT = 10.0
PROBE_TIMEOUT = 5.0
CLOSE_TIMEOUT = 10.0  # for the peer's answer to a relayed close frame
MAX_MESSAGE = 64 * 1024 * 1024  # as exec_session's; the target enforces its own limit
# RFC 9110 §7.6.1 hop-by-hop fields, plus what the client library sets itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade", "host"})


class _HasRoot(Protocol):
    @property
    def root(self) -> Path: ...


class _HasCommitIndex(Protocol):
    def commit_index(self) -> int: ...


class ProxyContext(Protocol):
    """What relaying needs from the daemon's ``Context``: where the cluster certificate is,
    and the Raft index this member has seen committed (the target applies that much
    first: ``peers.APPLIED_HEADER``)."""

    @property
    def paths(self) -> _HasRoot: ...

    @property
    def store(self) -> _HasCommitIndex: ...


class Proxy:
    """The daemon's one client session to other members, and its TLS context.

    The session is made on first use (it needs the running loop); the TLS context is
    rebuilt when ``server.crt`` or ``server.key`` change (joining a cluster replaces them).
    """

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tls: ClusterTLS | None = None
        # Operation id -> (member name, expiry on the loop's clock); see ``forwarding``.
        self.operations: dict[str, tuple[str, float]] = {}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,  # relay bodies byte for byte, Content-Encoding and all
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT))
        return self._session

    def ssl_context(self, root: Path) -> ssl.SSLContext:
        """Present the cluster certificate and accept only that certificate in return."""
        if self._tls is None or self._tls.root != root:
            self._tls = ClusterTLS(root)
        return self._tls.context()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


PROXY: web.AppKey[Proxy] = web.AppKey("proxy", Proxy)


def setup_proxy(app: web.Application) -> None:
    """Give ``app`` its relaying session, closed when the app is cleaned up."""
    proxy = app[PROXY] = Proxy()

    async def close_session(_: web.Application) -> AsyncIterator[None]:
        yield
        await proxy.close()

    app.cleanup_ctx.append(close_session)


CONNECT_ATTEMPTS = 10
CONNECT_RETRY_SECONDS = 0.5


def is_forwarded(request: web.Request) -> bool:
    return request.headers.get(FORWARDED_HEADER) == "1"


def is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def unreachable(address: str, exc: BaseException | None = None) -> ApiError:
    detail = f": {exc}" if exc is not None and str(exc) else ""
    return ApiError(503, f"Cluster member at {address} is not reachable{detail}")


def _proxy(request: web.Request) -> Proxy:
    proxy = request.app.get(PROXY)
    if proxy is None:
        raise RuntimeError("setup_proxy() was not called on this application")
    return proxy


def session_for(request: web.Request) -> aiohttp.ClientSession:
    return _proxy(request).session()


def ssl_context_for(request: web.Request, ctx: ProxyContext) -> ssl.SSLContext:
    return _proxy(request).ssl_context(ctx.paths.root)


def _url(address: str, path_qs: str) -> str:
    return f"https://{address}{path_qs}"


def _request_headers(request: web.Request, ctx: ProxyContext,
                     websocket: bool = False) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in request.headers.items():
        lowered = key.lower()
        if lowered in HOP_BY_HOP or (websocket and lowered.startswith("sec-websocket-")):
            continue
        headers.add(key, value)
    headers[FORWARDED_HEADER] = "1"
    applied = ctx.store.commit_index()
    if applied:
        headers[APPLIED_HEADER] = str(applied)
    return headers


def _response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


async def forward(request: web.Request, address: str, ctx: ProxyContext) -> web.StreamResponse:
    """Relay ``request`` to the member at ``address`` and stream its answer back.

    Raises ``ApiError(503)`` when the member cannot be reached; once the answer has
    started, a failure of the member cuts the client's connection (a short body, never
    a truncated body that looks complete).
    """
    proxy = _proxy(request)
    body = request.content.iter_chunked(CHUNK) if request.can_read_body else None
    for attempt in range(CONNECT_ATTEMPTS):
        try:
            upstream = await proxy.session().request(
                request.method, _url(address, request.path_qs), data=body,
                headers=_request_headers(request, ctx), ssl=proxy.ssl_context(ctx.paths.root),
                allow_redirects=False)
            break
        except aiohttp.ClientConnectorError as exc:
            # Nothing was sent yet: a member restarting its listener gets a moment.
            if attempt + 1 == CONNECT_ATTEMPTS:
                raise unreachable(address, exc) from exc
            await asyncio.sleep(CONNECT_RETRY_SECONDS)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise unreachable(address, exc) from exc
    async with upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=_response_headers(upstream.headers))
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)
            await response.write_eof()
        except (aiohttp.ClientError, TimeoutError):
            if request.transport is not None:
                request.transport.abort()
        except ConnectionError:
            pass  # the client went away: nothing left to tell it
    return response


async def forward_websocket(request: web.Request, address: str,
                            ctx: ProxyContext) -> web.StreamResponse:
    """Connect the same websocket on the member at ``address`` and relay frames both ways.

    The target's refusal (wrong secret, fd already connected) is returned with its status
    before this side is upgraded. Close frames are relayed with their code, and a close is
    acknowledged to its sender only once the other end has acknowledged it: exec's "the
    client has read all output before ``return``" survives the relay.
    """
    proxy = _proxy(request)
    try:
        upstream = await proxy.session().ws_connect(
            _url(address, request.path_qs), headers=_request_headers(request, ctx, websocket=True),
            ssl=proxy.ssl_context(ctx.paths.root), autoclose=False, max_msg_size=MAX_MESSAGE,
            timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT))
    except aiohttp.WSServerHandshakeError as exc:
        status = exc.status if exc.status >= 400 else 502
        raise ApiError(status, f"Websocket refused by the cluster member at {address}") from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise unreachable(address, exc) from exc
    downstream = web.WebSocketResponse(autoclose=False, max_msg_size=MAX_MESSAGE,
                                       timeout=CLOSE_TIMEOUT)
    try:
        await downstream.prepare(request)
        await _splice(downstream, upstream)
    finally:
        await upstream.close()
        with contextlib.suppress(ConnectionError):
            await downstream.close()
    return downstream


WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _splice(a: WebSocket, b: WebSocket) -> None:
    """Pump frames both ways until one side has closed and the close went through."""
    pumps = [asyncio.create_task(_pump(a, b)), asyncio.create_task(_pump(b, a))]
    try:
        await asyncio.gather(*pumps)
    finally:  # the handler is cancelled when the client's connection drops
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


def _sendable(code: int | None) -> int:
    """A close code that may go on the wire (1005, 1006 and 1015 are reserved)."""
    if code is None or not 1000 <= code <= 4999 or code in (1005, 1006, 1015):
        return WSCloseCode.OK
    return code


async def _pump(src: WebSocket, dst: WebSocket) -> None:
    while True:
        msg = await src.receive()
        try:
            if msg.type is WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
                continue
            if msg.type is WSMsgType.TEXT:
                await dst.send_str(msg.data)
                continue
        except ConnectionError:
            await src.close(code=WSCloseCode.GOING_AWAY)
            return
        if msg.type is WSMsgType.CLOSING:
            return  # the other pump is closing ``src`` on behalf of its peer
        if msg.type is WSMsgType.CLOSE:
            code = _sendable(msg.data)
            reason = msg.extra.encode() if isinstance(msg.extra, str) else b""
        else:  # CLOSED or ERROR: ``src``'s connection is gone
            code = WSCloseCode.GOING_AWAY if msg.type is WSMsgType.CLOSED else \
                WSCloseCode.INTERNAL_ERROR
            reason = b""
        # The far end acknowledges first; only then is ``src``'s close answered.
        await dst.close(code=code, message=reason)
        await src.close(code=code)
        return


async def probe(request: web.Request, address: str, path: str, ctx: ProxyContext) -> bool:
    """Whether the member at ``address`` answers ``GET path`` with 200 (False if unreachable)."""
    proxy = _proxy(request)
    try:
        async with proxy.session().get(
                _url(address, path), headers={FORWARDED_HEADER: "1"},
                ssl=proxy.ssl_context(ctx.paths.root),
                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
