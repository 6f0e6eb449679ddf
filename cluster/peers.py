"""Member-to-member HTTPS with the cluster certificate (mutual TLS).

Members share one certificate: each presents it as its client certificate and
accepts only it from the server, so a peer without the cluster key gets nowhere.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from cluster import tls

CHUNK = 1 << 20
# The Raft index the sending member has seen committed: the receiver applies as much before
# it handles the request (``wait_applied``), so a peer never acts on an older state than
# the member that asked (as a move's begin, committed a moment ago).
APPLIED_HEADER = "X-Corral-Applied"


def cluster_ssl(root: Path) -> object:
    crt, key = root / "server.crt", root / "server.key"
    return tls.client_context(crt, key, server_pem=crt.read_text())


@asynccontextmanager
async def peer_session(root: Path, timeout: float = 600.0, applied: int = 0,
                       ) -> AsyncIterator[aiohttp.ClientSession]:
    """A session to other members; ``applied``: this member's commit index, sent along
    (``APPLIED_HEADER``) with every request."""
    connector = aiohttp.TCPConnector(ssl=cluster_ssl(root))  # type: ignore[arg-type]
    headers = {APPLIED_HEADER: str(applied)} if applied else None
    async with aiohttp.ClientSession(connector=connector, headers=headers,
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
