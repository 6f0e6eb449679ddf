"""The node agent: converge this member's instances to the replicated desired state.

It is woken by the store's change feed (push, not polling). Each instance has
at most one worker at a time; a worker runs the instance's pending actions in
generation order and reports each one back with an ``instance.observed``
command. After a restart the pending actions are simply run again (actions
are idempotent), and instances that should run but do not are started.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

from cluster.state.apply_instances import expanded
from cluster.state.commands import command
from cluster.state.model import Action, Instance
from cluster.state.store import Store
from cluster.transport.peers import download_image
from node_agent.actions import perform
from node_agent.capacity import host_capacity
from node_agent.node import InstanceSpec, LocalNode
from node_agent.vm_guard import guard_vms

log = logging.getLogger(__name__)
RESYNC_SECONDS = 10.0
HEARTBEAT_SECONDS = 2.5


def created_uids(cmd: Any, member: str) -> list[str]:
    """The uids an ``instance.create`` or a plan (``instance.create_many``) places on
    ``member``: the instances whose worker should look at them now."""
    items = [cmd.args] if cmd.type == "instance.create" else cmd.args.get("items", [])
    return [str(item["uid"]) for item in items if isinstance(item, dict) and item.get("uid")
            and (cmd.type == "instance.create" or item.get("location") == member)]


class NodeAgent:
    def __init__(self, member: str, store: Store, node: LocalNode) -> None:
        self.member = member
        self.store = store
        self.node = node
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._restocking: set[tuple[str, str, bool]] = set()
        self._background: set[asyncio.Task[None]] = set()

    async def start(self, host_rebooted: bool = False) -> None:
        queue = self.store.subscribe()
        await self._boot(host_rebooted)
        self._task = asyncio.create_task(self._watch(queue))
        self._heartbeat_task = asyncio.create_task(self._heartbeat())
        if self.node.vm_driver is not None:
            self._background.add(asyncio.create_task(guard_vms(self.node.vm_driver)))

    async def close(self) -> None:
        tasks = [t for t in [self._task, self._heartbeat_task, *self._workers.values(),
                             *self._background] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _heartbeat(self) -> None:
        """Tell the cluster this member is alive (the Raft leader commits OFFLINE once it
        has heard none for longer than ``cluster.offline_threshold`` on its own clock).
        Beats keep a fixed cadence: a slow commit does not stretch the gap to the next."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            with self.store.read() as state:
                me = state.members.get(self.member)
                known, listed = me is not None, dict(me.capacity) if me else {}
                types = list(me.instance_types) if me else []
            if known:
                capacity = await asyncio.to_thread(self.capacity)
                extra: dict[str, Any] = {"capacity": capacity} if capacity != listed else {}
                if types != self.node.instance_types:
                    extra["instance_types"] = self.node.instance_types
                try:
                    await self.store.submit(command("member.heartbeat", name=self.member,
                                                    **extra), timeout=HEARTBEAT_SECONDS)
                except Exception as exc:  # noqa: BLE001 - a missed beat is retried
                    log.info("heartbeat not committed: %s", exc)
            due = max(due + HEARTBEAT_SECONDS, loop.time())
            await asyncio.sleep(due - loop.time())

    async def forget_local_copy(self, name: str, pool: Any) -> None:
        """Remove the container and volume of an instance that moved to another member."""

        def drop() -> None:
            if self.node.status(name) in ("Running", "Frozen"):
                raise RuntimeError(f"{name} is still running here")
            if (self.node.paths.containers / name).exists():
                self.node.driver.delete(name)
            pool.delete(name, missing_ok=True)

        await asyncio.to_thread(drop)

    def capacity(self) -> dict[str, float]:
        """This host's CPUs, memory and default pool size (blocking: statvfs, /proc)."""
        pool = self.node.pools.get("default") or next(iter(self.node.pools.values()), None)
        return host_capacity(pool.path if pool is not None else None)

    async def _boot(self, host_rebooted: bool) -> None:
        """Re-attach after a restart. After a host reboot, start again what ran before
        (as LXD does); after a mere daemon restart, what stopped meanwhile stopped by
        itself (a poweroff inside) and is only reported."""
        with self.store.read() as state:
            mine = [i.uid for i in state.instances.values() if i.location == self.member]
        if host_rebooted:
            for spec in await self._stopped_but_wanted():
                await self._run_action(spec, Action(0, "start"), report=False)
        await self._report_self_stops()
        for uid in mine:
            self.kick(uid)

    async def _stopped_but_wanted(self) -> list[InstanceSpec]:
        """Local instances that should run, have no pending work, and do not run."""
        with self.store.read() as state:
            specs = [self._spec_of(state, i) for i in state.instances.values()
                     if i.location == self.member and i.power in ("Running", "Frozen")
                     and not i.pending]
        statuses = await asyncio.to_thread(
            lambda: [self.node.status(s.name, s.type) for s in specs])
        return [s for s, status in zip(specs, statuses, strict=True) if status == "Stopped"]

    async def _report_self_stops(self) -> None:
        """Record instances that stopped on their own; ephemeral ones are deleted (LXD)."""
        for spec in await self._stopped_but_wanted():
            await self.store.submit(command("instance.observe_status", uid=spec.uid,
                                            status="Stopped"))
            await self._delete_if_ephemeral(spec)

    async def _delete_if_ephemeral(self, spec: InstanceSpec) -> None:
        with self.store.read() as state:
            inst = state.instance_by_uid(spec.uid)
            ephemeral = inst is not None and inst.ephemeral and inst.power != "Deleted"
        if ephemeral:
            await self.store.submit(command("instance.delete", name=spec.name, force=True))

    async def _watch(self, queue: asyncio.Queue[Any]) -> None:
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + RESYNC_SECONDS
        while True:
            try:
                change = await asyncio.wait_for(queue.get(), max(0.0, next_resync - loop.time()))
            except TimeoutError:
                change = None
            if loop.time() >= next_resync:  # by the clock: heartbeats keep the feed busy
                next_resync = loop.time() + RESYNC_SECONDS
                await self._resync_now()
            if change is None or not change.result.ok:
                continue
            for uid in self._uids_of(change.command):
                self.kick(uid)

    async def _resync_now(self) -> None:
        self._resync()
        try:
            await self._report_self_stops()
        except Exception as exc:  # noqa: BLE001 - the next resync tries again
            log.info("could not report self-stopped instances: %s", exc)

    def _uids_of(self, cmd: Any) -> list[str]:
        if cmd.type in ("instance.create", "instance.create_many"):
            return created_uids(cmd, self.member)
        if cmd.type.startswith("instance.") and cmd.type not in (
                "instance.observed", "instance.observe_status", "instance.purge"):
            with self.store.read() as state:
                inst = state.instances.get(cmd.args.get("new_name") or cmd.args.get("name", ""))
                return [inst.uid] if inst is not None else []
        return []

    def _resync(self) -> None:
        with self.store.read() as state:
            uids = [i.uid for i in state.instances.values()
                    if i.location == self.member and i.pending]
        for uid in uids:
            self.kick(uid)

    def kick(self, uid: str) -> None:
        """Make sure a worker will look at ``uid`` again."""
        self._dirty.add(uid)
        worker = self._workers.get(uid)
        if worker is None or worker.done():
            self._workers[uid] = asyncio.create_task(self._work(uid))

    async def _work(self, uid: str) -> None:
        try:
            while uid in self._dirty:
                self._dirty.discard(uid)
                while True:
                    found = self._next_action(uid)
                    if found is None:
                        break
                    await self._run_action(*found)
        finally:
            self._workers.pop(uid, None)

    def _next_action(self, uid: str) -> tuple[InstanceSpec, Action] | None:
        with self.store.read() as state:
            inst = state.instance_by_uid(uid)
            if inst is None or inst.location != self.member or not inst.pending:
                return None
            return self._spec_of(state, inst), copy.deepcopy(inst.pending[0])

    def _spec(self, uid: str) -> InstanceSpec | None:
        with self.store.read() as state:
            inst = state.instance_by_uid(uid)
            return self._spec_of(state, inst) if inst is not None else None

    @staticmethod
    def _spec_of(state: Any, inst: Instance) -> InstanceSpec:
        config, devices = expanded(state, inst.config, inst.devices, inst.profiles)
        return InstanceSpec(inst.uid, inst.name, inst.image, dict(config),
                            copy.deepcopy(devices), inst.type)

    async def ensure_image(self, fingerprint: str) -> None:
        """Fetch an image this member lacks from a member that has it (over the network)."""
        if await asyncio.to_thread(self.node.images.has, fingerprint):
            return
        with self.store.read() as state:
            image = state.images.get(fingerprint)
            holders = [state.members[m].address for m in (image.members if image else [])
                       if m in state.members and m != self.member and state.members[m].address]
        errors = []
        for address in holders:
            try:
                path = await download_image(self.node.paths.root, address, fingerprint,
                                            self.node.paths.images / "tmp")
                # A copy that is not the image asked for is refused before the store
                # keeps it (no stray image under another fingerprint).
                try:
                    info = await asyncio.to_thread(self.node.images.import_file, path,
                                                   expected=fingerprint)
                finally:
                    path.unlink(missing_ok=True)
                await self.store.submit(command("image.add", fingerprint=fingerprint,
                                                info=info.to_dict(), member=self.member))
                return
            except Exception as exc:  # noqa: BLE001 - try the next member that has it
                errors.append(f"{address}: {exc}")
        raise RuntimeError(f"Image {fingerprint[:12]} is not on this member and no member "
                           f"that has it could send it ({'; '.join(errors) or 'none has it'})")

    def restock(self, spec: InstanceSpec) -> None:
        """Prepare a spare rootfs of the spec's image in the background (once at a time)."""
        key = (spec.image, spec.pool, spec.privileged)
        if key in self._restocking:
            return
        self._restocking.add(key)

        async def restock() -> None:
            try:
                await asyncio.to_thread(self.node.restock_spare, spec)
            except Exception as exc:  # noqa: BLE001 - a spare is an optimisation only
                log.info("could not prepare a spare rootfs: %s", exc)
            finally:
                self._restocking.discard(key)

        task = asyncio.create_task(restock())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_action(self, spec: InstanceSpec, act: Action, report: bool = True) -> None:
        error = ""
        try:
            if act.kind == "create":
                await self.ensure_image(spec.image)
            await asyncio.to_thread(perform, self.node, spec, act.kind, act.args)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, not raised
            log.warning("%s %s failed: %s", act.kind, spec.name, exc)
            error = str(exc) or type(exc).__name__
        if act.kind == "create" and not error and not spec.is_vm:
            self.restock(spec)
        if not report:
            return
        status = "Stopped" if act.kind == "delete" else await asyncio.to_thread(
            self.node.status, spec.name, spec.type)
        # If this commit fails the action stays pending; the resync runs it again
        # (actions are idempotent) and reports then.
        await self.store.submit(command("instance.observed", uid=spec.uid,
                                        generation=act.generation, status=status, error=error))
        if act.kind == "stop" and not error:
            await self._delete_if_ephemeral(spec)
