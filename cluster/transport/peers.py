"""Member-to-member HTTPS with the cluster certificate (mutual TLS).

Members share one certificate: each presents it as its client certificate and
accepts only it from the server, so a peer without the cluster key gets nowhere.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from corral_shared import tls

CHUNK = 1 << 20
# The Raft index the sending member has seen committed: the receiver applies as much before
# it handles the request (``wait_applied``), so a peer never acts on an older state than
# the member that asked (as a move's begin, committed a moment ago).
APPLIED_HEADER = "X-Corral-Applied"


def cluster_ssl(root: Path) -> ssl.SSLContext:
    crt, key = root / "server.crt", root / "server.key"
    return tls.client_context(crt, key, server_pem=crt.read_text())


class ClusterTLS:
    """The client TLS context of the cluster certificate, made once and again only when
    ``server.crt`` or ``server.key`` change (joining a cluster replaces them)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: tuple[tuple[int, int], ssl.SSLContext] | None = None

    def context(self) -> ssl.SSLContext:
        crt, key = self.root / "server.crt", self.root / "server.key"
        stamp = (crt.stat().st_mtime_ns, key.stat().st_mtime_ns)
        if self._made is None or self._made[0] != stamp:
            self._made = (stamp, cluster_ssl(self.root))
        return self._made[1]


class PeerClient:
    """A daemon's pooled HTTPS connections to other members.

    A mutual TLS handshake with the cluster's P-384 key costs ~9 ms of CPU on the two
    ends together; a move makes a dozen calls between members, and an evacuation several
    moves at once on hosts that are busy stopping and starting containers. Connections
    are kept alive and reused (aiohttp sends an idempotent request once more if a reused
    connection turns out closed). Made per daemon, closed when it stops.
    """

    def __init__(self, root: Path) -> None:
        self.tls = ClusterTLS(root)
        self._session: aiohttp.ClientSession | None = None

    def session(self, timeout: float, applied: int = 0) -> PeerSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        headers = {APPLIED_HEADER: str(applied)} if applied else {}
        return PeerSession(self._session, self.tls.context(), timeout, headers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class PeerSession:
    """The shared session with this call's TLS context, timeout and headers."""

    def __init__(self, session: aiohttp.ClientSession, context: ssl.SSLContext,
                 timeout: float, headers: dict[str, str]) -> None:
        self._session, self._ssl, self._headers = session, context, headers
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                **kwargs: Any) -> Any:
        return self._session.request(method, url, ssl=self._ssl,
                                     headers={**self._headers, **(headers or {})},
                                     timeout=kwargs.pop("timeout", self._timeout), **kwargs)

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.request("POST", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Any:
        return self.request("DELETE", url, **kwargs)


@asynccontextmanager
async def peer_session(root: Path, timeout: float = 600.0,
                       ) -> AsyncIterator[aiohttp.ClientSession]:
    """A one-off session to other members, for callers without the daemon's pooled
    ``PeerClient`` at hand (an image download, asking the cluster about roles)."""
    connector = aiohttp.TCPConnector(ssl=cluster_ssl(root))
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        yield session


async def download_image(root: Path, address: str, fingerprint: str, into: Path) -> Path:
    """Stream a unified image tarball from the member at ``address`` into a temp file
    under ``into``; every byte crosses the network, nothing is shared on disk."""
    into.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=into, suffix=".tar")
    os.close(handle)
    target = Path(name)
    try:
        async with peer_session(root) as session:
            url = f"https://{address}/1.0/images/{fingerprint}/export"
            async with session.get(url, headers={"X-Corral-Forwarded": "1"}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"member {address} answered {resp.status} for image "
                                       f"{fingerprint[:12]}")
                if not resp.content_type.startswith("application/octet-stream"):
                    raise RuntimeError("split images cannot be copied between members yet")
                with target.open("wb") as out:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        await asyncio.to_thread(out.write, chunk)
        return target
    except BaseException:
        target.unlink(missing_ok=True)
        raise
