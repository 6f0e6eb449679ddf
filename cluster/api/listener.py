"""A header read timeout for the API's listeners (unix socket and HTTPS).

aiohttp waits for a request's line and headers for as long as the connection stays
open: a client sending one byte per second held a connection (and its memory) for
ever, and a few thousand such clients exhaust the daemon's file descriptors (issue 11,
"slow loris"). LXD's Go server sets ``ReadHeaderTimeout``; this is the same rule: a
connection must deliver a complete request head within ``HEADER_TIMEOUT`` seconds of
being accepted, or of the first byte of its next request, else it is closed. Idle
keep-alive connections between requests stay governed by aiohttp's keep-alive timeout,
and request bodies (uploads) are not timed here.

aiohttp has no such setting, so its request handler is subclassed: the timer is armed
when a connection opens or a new request starts arriving, and disarmed once the parser
has queued a complete request head. ``tests/unit/test_header_timeout.py`` pins this
against a real listener, so an aiohttp upgrade that changes these internals fails there.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)
HEADER_TIMEOUT = 5.0  # s, as Go servers commonly set ReadHeaderTimeout


class _HeaderTimeoutHandler(RequestHandler):
    """aiohttp's HTTP/1 protocol, closing a connection whose request head is too slow."""

    header_timeout = HEADER_TIMEOUT
    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._awaiting_head():
            self._disarm()  # a complete head is queued, or a request is being served
        elif self._timer is None:
            self._arm()  # the first bytes of the next request on a kept-alive connection

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        return not self._messages and not self._request_in_progress

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._awaiting_head():
            log.info("closing a connection that sent no complete request head in %.0f s",
                     self.header_timeout)
            self.force_close()


class _HeaderTimeoutServer(web.Server):
    """aiohttp's connection factory, making the handler above."""

    header_timeout = HEADER_TIMEOUT

    def __call__(self) -> RequestHandler:
        handler = _HeaderTimeoutHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout = self.header_timeout
        return handler


async def start_runner(app: web.Application, header_timeout: float = HEADER_TIMEOUT,
                       **kwargs: object) -> web.AppRunner:
    """An ``AppRunner`` set up for ``app`` whose sites time out slow request heads.
    ``kwargs`` go to ``web.AppRunner`` (``access_log``, ``handle_signals``, ...)."""
    runner = web.AppRunner(app, **kwargs)  # type: ignore[arg-type]
    await runner.setup()
    server = runner.server
    assert server is not None
    # The factory sites hand to the event loop; its class is the one thing changed.
    server.__class__ = _HeaderTimeoutServer
    server.header_timeout = header_timeout  # type: ignore[attr-defined]
    return runner
