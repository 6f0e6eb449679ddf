"""``corral daemon``: one member's process, in the foreground.

Start order: replicated state, local parts (pools, bridges), node agent
(re-attaches to running containers), then the API on the unix socket, then the
HTTPS and metrics listeners. Once ``GET /1.0`` answers on the unix socket, systemd
hears ``READY=1`` (``sd_notify``; ``deploy/systemd/corral.service`` is ``Type=notify``).

Signals, as LXD's (its ``doc/daemon-behavior.md``):
- SIGTERM, SIGINT: stop serving and exit; instances keep running (a restarted daemon
  re-attaches to them).
- SIGPWR: the host is going down. Stop serving, then stop every instance of this member
  cleanly (``node_agent.host_shutdown``: in parallel, each within its
  ``boot.host_shutdown_timeout``, all within a bounded total), then exit. Their desired
  state stays as it was, so what should run starts again when the host is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
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
from cluster.sd_notify import Notifier
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
from cluster.transport.unix_socket import SOCKET_GROUP, bind_socket
from node_agent.agent import NodeAgent
from node_agent.facade import NodeFacade
from node_agent.idmap import ensure_root_idmap
from node_agent.node import LocalNode
from node_agent.paths import Paths, corral_dir

log = logging.getLogger("corral")
READY_TIMEOUT = 60.0  # s for the API to answer its first GET /1.0 on the unix socket


def _setup_logging(paths: Paths, debug: bool) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(paths.log)):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def serve(paths: Paths, ready: asyncio.Event | None = None,
                notifier: Notifier | None = None) -> None:
    """Run the member until SIGTERM/SIGINT (instances keep running) or SIGPWR (they are
    stopped first). ``ready`` is set, and ``notifier`` sends ``READY=1``, once the API
    answers on the unix socket."""
    notifier = notifier or Notifier()
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
    sock, access = await asyncio.to_thread(bind_socket, paths.socket)
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        await https.reconcile()  # core.https_address, if set
    except Exception as exc:  # noqa: BLE001 - the unix socket keeps serving; a PUT retries
        log.error("HTTPS listener not started: %s", exc)
    try:
        await metrics_listener.reconcile()  # core.metrics_address, if set
    except Exception as exc:  # noqa: BLE001 - as above
        log.error("metrics listener not started: %s", exc)
    stop = asyncio.Event()
    power_cut = asyncio.Event()  # SIGPWR: the host is going down
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGPWR, _both, power_cut, stop)
    try:
        await _api_answers(paths.socket, READY_TIMEOUT)
        log.info("corral daemon ready: member %s, socket %s (%s)", local.member, paths.socket,
                 access.describe(SOCKET_GROUP))
        await notifier.notify_async("READY=1", f"STATUS=serving member {local.member}")
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        shutdown = power_cut.is_set()
        log.info("corral daemon stopping (%s)", "host shutdown: stopping instances"
                 if shutdown else "instances keep running")
        await notifier.notify_async("STOPPING=1", "STATUS=host shutdown: stopping instances"
                                    if shutdown else "STATUS=stopping (instances keep running)")
        await https.close()
        await metrics_listener.close()
        await runner.cleanup()
        sock.close()
        await ops.close()
        await controllers.close()  # cancels and awaits every controller
        partners_task.cancel()
        way_back_task.cancel()
        accel_task.cancel()
        await agent.close()
        if shutdown or power_cut.is_set():  # also a SIGPWR that came while stopping
            await _stop_instances(agent)
        await ctx.peer_client.close()
        await store.close()


def _both(first: asyncio.Event, second: asyncio.Event) -> None:
    first.set()
    second.set()


async def _api_answers(socket_path: Path, timeout: float) -> None:
    """Return once ``GET /1.0`` on the unix socket answers 200: what ``READY=1`` promises
    (clients such as ``corral waitready`` ask the same). TimeoutError after ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                async with aiohttp.ClientSession(
                        connector=aiohttp.UnixConnector(path=str(socket_path))) as session:
                    async with session.get("http://corral/1.0") as response:
                        if response.status == 200:
                            return
                        log.warning("GET /1.0 on %s answered %d", socket_path,
                                    response.status)
            except aiohttp.ClientError as exc:
                log.warning("GET /1.0 on %s failed: %s", socket_path, exc)
            await asyncio.sleep(0.2)


async def _stop_instances(agent: NodeAgent) -> None:
    """The host-shutdown stop of every instance here; each failure is logged."""
    done = await agent.stop_for_host_shutdown()
    for item in done:
        if item.error:
            log.error("host shutdown: %s did not stop: %s", item.name, item.error)
        else:
            log.info("host shutdown: %s stopped in %.1f s", item.name, item.seconds)
    log.info("host shutdown: %d instance(s) stopped, %d failed",
             sum(1 for i in done if not i.error), sum(1 for i in done if i.error))


def main(args: Any = None) -> int:
    paths = Paths(corral_dir())
    paths.ensure()
    _setup_logging(paths, bool(getattr(args, "debug", False)))
    paths.pid.write_text(f"{os.getpid()}\n")
    notifier = Notifier.from_environ()  # read once, and kept from every child
    try:
        asyncio.run(serve(paths, notifier=notifier))
    finally:
        try:
            if paths.pid.read_text().strip() == str(os.getpid()):
                paths.pid.unlink()
        except OSError:
            pass
    return 0
