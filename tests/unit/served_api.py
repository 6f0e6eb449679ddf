"""The daemon's API app on a real unix socket, in a thread of its own, over a real
one-member Raft store on loopback: what tests that drive every route need.

The node agent is built but not started, so nothing reaches LXC or QEMU: a request that
is accepted commits its command and its operation waits. Tests talk to it with the
synchronous ``tests.integration.api.Api`` client, so they can be Hypothesis properties.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import pickle
import socket
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from cluster.api.app import build_app
from cluster.api.context import Context
from cluster.api.event_hub import EventHub
from cluster.api.listener import start_runner
from cluster.api.op_registry import Operations
from cluster.state.commands import command
from cluster.state.raft import RaftStore
from cluster.transport.https import HTTPS, HttpsListener, Identity
from corral_shared import tls
from node_agent.agent import NodeAgent
from node_agent.facade import NodeFacade
from node_agent.idmap import IdMap
from node_agent.node import LocalNode
from node_agent.paths import Paths
from tests.integration.api import Api

MEMBER = "m1"
RESOURCES = ("members", "instances", "images", "aliases", "profiles", "storage_pools",
             "networks", "config", "certificates", "trust_tokens", "join_tokens")


@dataclass
class Served:
    api: Api
    store: RaftStore
    loop: asyncio.AbstractEventLoop
    image: str  # the fingerprint of the one image
    ctx: Context
    https_port: int  # the same app over TLS on loopback, with this member's certificate
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def digest(self) -> str:
        """A digest of every replicated resource; the log's bookkeeping (applied ids,
        index) and derived caches are left out, since a refused command may be counted."""
        with self.store.read() as state:
            return hashlib.sha256(pickle.dumps([getattr(state, k) for k in RESOURCES])
                                  ).hexdigest()


def _address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _tiny_image(directory: Path) -> Path:
    """An LXD unified tarball: metadata.yaml and an empty rootfs."""
    tarball = directory / "tiny.tar"
    meta = (b"architecture: x86_64\ncreation_date: 1700000000\n"
            b"properties:\n  os: tiny\n")
    with tarfile.open(tarball, "w") as tar:
        info = tarfile.TarInfo("metadata.yaml")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
        rootfs = tarfile.TarInfo("rootfs")
        rootfs.type, rootfs.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(rootfs)
    return tarball


async def _seed(store: RaftStore, node: LocalNode, paths: Paths) -> str:
    node.add_pool("default")
    image = node.images.import_file(_tiny_image(paths.root))
    capacity = {"cpu": 64, "memory": 2.0**40, "disk": 2.0**40}
    await store.submit(command("cluster.bootstrap",
                               member={"name": MEMBER, "capacity": capacity},
                               pool={"name": "default", "driver": "dir"},
                               network={"name": "corralbr0"}))
    await store.submit(command("image.add", fingerprint=image.fingerprint, member=MEMBER,
                               info=image.to_dict()))
    await store.submit(command("alias.create", name="busybox", target=image.fingerprint))
    return image.fingerprint


async def _serve(root: Path, served: list[Served], ready: threading.Event) -> None:
    paths = Paths(root)
    paths.ensure()
    store = RaftStore(_address(), [], paths.raft_dir, "test")
    await store.start()
    node = LocalNode.open(paths, IdMap(1_000_000, 65536, 1_000_000, 65536))
    image = await _seed(store, node, paths)
    events = EventHub(MEMBER)
    ops = Operations(MEMBER, lambda op: events.publish("operation", op.to_dict()))
    ctx = Context(paths=paths, member=MEMBER, store=store,
                  host=NodeFacade(node, NodeAgent(MEMBER, store, node)), ops=ops,
                  events=events)
    app = build_app(ctx)
    identity = Identity.load(paths.root)
    app[HTTPS] = HttpsListener(identity, ctx)
    runner = await start_runner(app, access_log=None, handle_signals=False)
    await web.UnixSite(runner, str(paths.socket)).start()
    https = web.TCPSite(runner, "127.0.0.1", 0,
                        ssl_context=tls.server_context(identity.crt, identity.key))
    await https.start()
    port = int(https._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    me = Served(Api(str(paths.socket)), store, asyncio.get_running_loop(), image, ctx, port)
    served.append(me)
    ready.set()
    try:
        await me.stop.wait()
    finally:
        await runner.cleanup()
        await ops.close()
        await ctx.peer_client.close()
        await store.close()


@contextmanager
def served_api(root: Path) -> Iterator[Served]:
    """The app served on ``root/unix.socket`` until the block ends."""
    served: list[Served] = []
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(_serve(root, served, ready))
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="served-api", daemon=True)
    thread.start()
    ready.wait(60)
    if failure or not served:
        raise RuntimeError(f"the API did not start: {failure}")
    try:
        yield served[0]
    finally:
        served[0].loop.call_soon_threadsafe(served[0].stop.set)
        thread.join(30)
