"""``corral daemon``: one member's process, in the foreground.

Start order: replicated state, local parts (pools, bridges), node agent
(re-attaches to running containers), then the API on the unix socket.
Stopping the daemon leaves containers running, as LXD does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from functools import partial
from typing import Any

from aiohttp import web

from cluster.api import outcomes
from cluster.api.app import build_app
from cluster.api.context import Context
from cluster.api.event_hub import EventHub
from cluster.api.handlers.images import cleanup_uploads
from cluster.api.listener import start_runner
from cluster.api.op_registry import Operations
from cluster.controllers.control_metrics import ControlMetrics
from cluster.controllers.evacuation import EvacuationController
from cluster.controllers.ha import HaController
from cluster.controllers.live_moves import LiveMovesController
from cluster.controllers.liveness import LivenessController
from cluster.controllers.moves import MovesController
from cluster.controllers.runtime import LeaderRuntime
from cluster.controllers.voters import VotersController
from cluster.local_config import load_or_create
from cluster.membership.raft_role import find_way_back, track_partners
from cluster.state.raft import RaftStore
from cluster.transport.https import (
    HTTPS,
    METRICS_LISTENER,
    VM_ACCELERATOR_KEY,
    HttpsListener,
    Identity,
    MetricsListener,
)
from cluster.transport.raft_secret import member_raft_password
from node_agent.agent import NodeAgent
from node_agent.facade import NodeFacade
from node_agent.idmap import ensure_root_idmap
from node_agent.node import LocalNode
from node_agent.paths import Paths, corral_dir

log = logging.getLogger("corral")


def _setup_logging(paths: Paths, debug: bool) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(paths.log)):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def serve(paths: Paths, ready: asyncio.Event | None = None) -> None:
    paths.ensure()
    local = await asyncio.to_thread(load_or_create, paths.cluster_file)
    identity = await asyncio.to_thread(Identity.load, paths.root)
    password = await asyncio.to_thread(member_raft_password, paths.raft_dir, local.clustered,
                                       identity.key)
    store = RaftStore(local.raft_address, local.partners, paths.raft_dir, password,
                      voter=local.voter)
    await store.start()
    idmap = await asyncio.to_thread(ensure_root_idmap)
    node = LocalNode.open(paths, idmap)
    try:
        node.set_vm_accelerator_mode(local.config.get(VM_ACCELERATOR_KEY, ""))
    except ValueError as exc:
        log.error("%s; the probe decides", exc)
    await asyncio.to_thread(cleanup_uploads, paths.images)
    events = EventHub(local.member)
    ops = Operations(local.member, lambda op: events.publish("operation", op.to_dict()))
    ops.follow_unknown = partial(outcomes.follow, ops, store.settle)
    agent = NodeAgent(local.member, store, node)
    control = ControlMetrics()  # the API's and the controllers' (one per daemon)
    ctx = Context(paths=paths, member=local.member, store=store,
                  host=NodeFacade(node, agent), ops=ops, events=events, local=local,
                  control=control)
    await ctx.open_local_parts()
    accel_task = asyncio.create_task(asyncio.to_thread(node.probe_accelerator))
    await agent.start()
    partners_task = asyncio.create_task(track_partners(ctx))
    controllers = LeaderRuntime(store, lambda: ctx.member,
                                [LivenessController(metrics=control), VotersController(),
                                 MovesController(control), LiveMovesController(control),
                                 EvacuationController(control), HaController(metrics=control)],
                                ctx.peer_client)
    controllers.start()
    way_back_task = asyncio.create_task(find_way_back(ctx))
    app = build_app(ctx)
    https = app[HTTPS] = HttpsListener(identity, ctx)
    metrics_listener = app[METRICS_LISTENER] = MetricsListener(identity, ctx)
    runner = await start_runner(app, access_log=None, handle_signals=False)
    https.attach(runner)
    metrics_listener.attach(runner)
    if paths.socket.exists():
        paths.socket.unlink()
    site = web.UnixSite(runner, str(paths.socket))
    await site.start()
    os.chmod(paths.socket, 0o600)
    try:
        await https.reconcile()  # core.https_address, if set
    except Exception as exc:  # noqa: BLE001 - the unix socket keeps serving; a PUT retries
        log.error("HTTPS listener not started: %s", exc)
    try:
        await metrics_listener.reconcile()  # core.metrics_address, if set
    except Exception as exc:  # noqa: BLE001 - as above
        log.error("metrics listener not started: %s", exc)
    log.info("corral daemon ready: member %s, socket %s", local.member, paths.socket)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("corral daemon stopping (instances keep running)")
        await https.close()
        await metrics_listener.close()
        await runner.cleanup()
        await ops.close()
        await controllers.close()  # cancels and awaits every controller
        partners_task.cancel()
        way_back_task.cancel()
        accel_task.cancel()
        await agent.close()
        await ctx.peer_client.close()
        await store.close()


def main(args: Any = None) -> int:
    paths = Paths(corral_dir())
    paths.ensure()
    _setup_logging(paths, bool(getattr(args, "debug", False)))
    paths.pid.write_text(f"{os.getpid()}\n")
    try:
        asyncio.run(serve(paths))
    finally:
        try:
            if paths.pid.read_text().strip() == str(os.getpid()):
                paths.pid.unlink()
        except OSError:
            pass
    return 0
