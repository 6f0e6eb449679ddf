"""A small asynchronous client for LXD's ``/1.0`` REST API over a unix socket.

It speaks exactly what ``lxc`` speaks, so it works against corral and against a real LXD
(``CORRAL_SOCKET=/var/snap/lxd/common/lxd/unix.socket corral list``).

Errors (every command failure is one of these; ``main`` prints ``Error: <message>``)::

    CliError                  a failure meant for the user; exit code 1 unless it says otherwise
     +-- ApiError             the server answered with LXD's error envelope or a failed operation
     +-- Unreachable          nothing answers on the socket
     +-- UsageError           the command line itself is wrong
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corral_cli.http1 import Connection, ProtocolError, request_target
from corral_cli.progress import Progress
from corral_shared.paths import corral_dir

if TYPE_CHECKING:
    import aiohttp

    from corral_cli.remote_config import Remote

HOST = "http://unix.socket"  # the host name lxc uses for its unix-socket transport
FINAL_OK = 200
FINAL_FAILED = (400, 401)  # Failure, Cancelled


class CliError(Exception):
    """A failure to report as ``Error: <message>``; ``exit_code`` is what the process returns."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ApiError(CliError):
    """The server said no: ``status_code`` is the HTTP or operation code, ``message`` LXD's."""

    def __init__(self, status_code: int, message: str, metadata: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.metadata = metadata


class Unreachable(CliError):
    """The socket is missing or refuses connections (daemon not running)."""


class UsageError(CliError):
    """Bad arguments, found before anything was sent."""


def socket_path() -> str:
    """``$CORRAL_SOCKET`` if set (any LXD-compatible socket), else ``$CORRAL_DIR/unix.socket``."""
    explicit = os.environ.get("CORRAL_SOCKET")
    if explicit:
        return explicit
    return str(corral_dir() / "unix.socket")


@dataclass
class Response:
    """One decoded LXD envelope plus the HTTP facts the client needs (status, ETag)."""

    status: int
    headers: Mapping[str, str]
    envelope: dict[str, Any]

    @property
    def metadata(self) -> Any:
        return self.envelope.get("metadata")

    @property
    def etag(self) -> str | None:
        return self.headers.get("ETag")

    @property
    def is_async(self) -> bool:
        return self.envelope.get("type") == "async"

    @property
    def operation(self) -> str:
        """The operation URL of an async response (``/1.0/operations/<id>``)."""
        url = self.envelope.get("operation") or ""
        if not url and isinstance(self.metadata, dict) and self.metadata.get("id"):
            url = f"/1.0/operations/{self.metadata['id']}"
        return str(url)


def error_from(status: int, text: str) -> ApiError:
    """Turn a non-2xx body into an ``ApiError`` carrying LXD's ``error`` text when present."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("error"):
        return ApiError(int(body.get("error_code") or status), str(body["error"]),
                        body.get("metadata"))
    return ApiError(status, text.strip() or f"HTTP {status}")


class Client:
    """One HTTP session on the daemon's socket, or over HTTPS to a remote (see
    ``corral remote add``) with this client's certificate; ``async with Client() as c``."""

    def __init__(self, socket: str | None = None, remote: Remote | None = None) -> None:
        self.remote = remote
        self.socket = remote.url if remote is not None else socket or socket_path()
        self.base = remote.url if remote is not None else HOST
        self._session: aiohttp.ClientSession | None = None
        self._plain: Connection | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._plain is not None:
            await self._plain.close()
            self._plain = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session, created on first use so commands that never talk stay fast."""
        if self._session is None:
            import aiohttp

            connector: aiohttp.BaseConnector
            if self.remote is not None:
                connector = aiohttp.TCPConnector(ssl=self.remote.ssl_context())
            else:
                connector = aiohttp.UnixConnector(path=self.socket)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                headers={"User-Agent": "corral"})
        return self._session

    def _unreachable(self, exc: BaseException) -> Unreachable:
        reason = getattr(exc, "os_error", None) or exc
        text = getattr(reason, "strerror", None) or str(reason)
        if self.remote is not None:
            return Unreachable(f"Cannot reach remote {self.remote.name!r} at {self.base}: {text}")
        return Unreachable(f"Cannot reach the daemon at {self.socket}: {text} "
                           "(is it running? see CORRAL_DIR, CORRAL_SOCKET)")

    @asynccontextmanager
    async def raw(self, method: str, path: str, *, body: Any = None, data: Any = None,
                  headers: Mapping[str, str] | None = None,
                  params: Mapping[str, str] | None = None,
                  ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The un-decoded response, for streamed bodies (file pull, image export)."""
        import aiohttp

        hdrs = dict(headers or {})
        if body is not None:
            data = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        try:
            async with self.session.request(method, self.base + path, data=data, headers=hdrs,
                                            params=params) as resp:
                yield resp
        except aiohttp.ClientSSLError as exc:  # a subclass of ClientConnectorError
            raise CliError(f"TLS failure talking to {self.base}: {exc}") from exc
        except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionError) as exc:
            raise self._unreachable(exc) from exc

    async def request(self, method: str, path: str, *, body: Any = None, data: Any = None,
                      headers: Mapping[str, str] | None = None,
                      params: Mapping[str, str] | None = None) -> Response:
        """One request; raises ``ApiError`` for an error envelope or a non-2xx status.
        Bodies that are bytes or absent go over ``http1`` (no aiohttp import)."""
        if data is None or isinstance(data, bytes):
            status, resp_headers, text = await self._plain_request(
                method, path, body=body, data=data, headers=headers, params=params)
        else:
            async with self.raw(method, path, body=body, data=data, headers=headers,
                                params=params) as resp:
                status, resp_headers, text = resp.status, resp.headers.copy(), await resp.text()
        if status >= 300:
            raise error_from(status, text)
        try:
            envelope = json.loads(text) if text else {}
        except ValueError as exc:
            raise ApiError(status, f"Invalid JSON from server: {exc}") from exc
        if envelope.get("type") == "error":
            raise error_from(int(envelope.get("error_code") or status), text)
        return Response(status, resp_headers, envelope)

    async def _plain_request(self, method: str, path: str, *, body: Any, data: bytes | None,
                             headers: Mapping[str, str] | None,
                             params: Mapping[str, str] | None,
                             ) -> tuple[int, Mapping[str, str], str]:
        hdrs = {"User-Agent": "corral", **(headers or {})}
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if self._plain is None:
            context = self.remote.ssl_context() if self.remote is not None else None
            self._plain = Connection(self.socket, self.remote.url if self.remote else None,
                                     context)
        try:
            reply = await self._plain.request(method, request_target(path, params), hdrs,
                                              data or b"")
        except ssl.SSLError as exc:
            raise CliError(f"TLS failure talking to {self.base}: {exc}") from exc
        except (ProtocolError, asyncio.IncompleteReadError) as exc:
            raise CliError(f"Bad answer from {self.base}: {exc}") from exc
        except OSError as exc:  # missing socket, refused, reset
            raise self._unreachable(exc) from exc
        return reply.status, reply.headers, reply.body.decode("utf-8", errors="replace")

    async def get_text(self, path: str, params: Mapping[str, str] | None = None,
                       accept: str = "text/plain") -> str:
        """The body of a GET that answers text, not LXD's envelope (``/1.0/metrics``);
        errors still come as the envelope and raise ``ApiError``."""
        status, _, text = await self._plain_request("GET", path, body=None, data=None,
                                                    headers={"Accept": accept},
                                                    params=params)
        if status >= 300:
            raise error_from(status, text)
        return text

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """The metadata of a sync GET."""
        return (await self.request("GET", path, params=params)).metadata

    async def get_etag(self, path: str) -> tuple[Any, str | None]:
        """Metadata and ETag, for the GET-modify-PUT cycle ``lxc`` uses."""
        resp = await self.request("GET", path)
        return resp.metadata, resp.etag

    async def call(self, method: str, path: str, body: Any = None, *, etag: str | None = None,
                   data: Any = None, headers: Mapping[str, str] | None = None,
                   progress: Progress | None = None) -> Any:
        """Send a request and, when the answer is an operation, wait for it to end.

        Returns the final operation (async) or the metadata (sync); raises ``ApiError``
        when the operation fails.
        """
        hdrs = dict(headers or {})
        if etag:
            hdrs["If-Match"] = etag
        resp = await self.request(method, path, body=body, data=data, headers=hdrs)
        if not resp.is_async:
            return resp.metadata
        return await self.wait_operation(resp.operation, progress)

    async def wait_operation(self, op_url: str, progress: Progress | None = None) -> dict[str, Any]:
        """Block on ``<op_url>/wait`` until the operation ends; raise ``ApiError`` on failure.

        With a progress printer it polls in one-second waits so the operation's
        ``*_progress`` metadata can be shown while it runs.
        """
        timeout = "1" if progress is not None else "-1"
        while True:
            op = await self.get(f"{op_url}/wait", params={"timeout": timeout})
            status = int(op.get("status_code") or 0)
            if status == FINAL_OK:
                return dict(op)
            if status in FINAL_FAILED:
                raise ApiError(status, str(op.get("err") or op.get("status") or "Failed"),
                               op.get("metadata"))
            if progress is not None:
                progress.update_op(op)

    async def websocket(self, path: str) -> aiohttp.ClientWebSocketResponse:
        """Open a websocket on the daemon (exec streams, events)."""
        import aiohttp

        # A peer that never answers our close frame must not stall the exit for long.
        timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0)
        try:
            return await self.session.ws_connect(self.base + path, max_msg_size=0, autoping=True,
                                                 timeout=timeout)
        except aiohttp.WSServerHandshakeError as exc:
            raise ApiError(exc.status, f"Websocket refused: {exc.message}") from exc
        except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionError) as exc:
            raise self._unreachable(exc) from exc
