"""The node agent: converge this member's instances to the replicated desired state.

It is woken by the store's change feed (push, not polling) and looks at every local
instance again every ``RESYNC_SECONDS`` (a safety net). Each instance has at most one
worker at a time; a worker runs convergence passes (``converge``): the steps that
``desired.plan_instance`` finds between the record (exists here, name, spec revision,
deleted) and the last report (rename, create, update, delete), then the steps that
``desired_snapshots.plan_snapshots`` finds in the desired snapshot set and restore (take,
delete, rename, restore), then the power steps that ``converge.plan_power`` finds between
the desired power state and what the host shows, and one ``instance.observed`` report for
the whole pass, which says which snapshot steps it carried out.
After a restart, a crash or a host reboot the agent does the same thing: it converges every
local instance (steps are idempotent), with no special case and no queue to replay.
It also ends, as the replicated state says the move ended, the half of a live migration
that a QEMU here holds when the daemon that followed it died (``migration_leftovers``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

from cluster.state.apply_instances import expanded
from cluster.state.commands import command
from cluster.state.ha import ha_enabled
from cluster.state.model import Action, Instance
from cluster.state.store import Store
from cluster.transport.peers import download_image
from node_agent.actions import perform
from node_agent.capacity import host_capacity
from node_agent.converge import Seen, Want, host_token, plan_power
from node_agent.desired import MISSING, Record, Reported, Step, local_name, plan_instance, reached
from node_agent.desired_snapshots import SnapStep, SnapWant, plan_snapshots
from node_agent.fencing.guard import FenceGuard
from node_agent.fencing.timing import HEARTBEAT_PERIOD, HEARTBEAT_SUBMIT_TIMEOUT
from node_agent.host_shutdown import TOTAL_SECONDS, Marks, Outcome, Target, own_timeout, shut_down
from node_agent.migration_leftovers import EndStep, Side, end_step
from node_agent.node import InstanceSpec, LocalNode
from node_agent.old_queues import desired_of_queue, snapshots_of_queue
from node_agent.replication.holding import HeldReplicas
from node_agent.replication.shipper import Shipper
from node_agent.stale_copies import Sweeper
from node_agent.vm_guard import guard_vms

log = logging.getLogger(__name__)
RESYNC_SECONDS = 10.0


def created_uids(cmd: Any, member: str) -> list[str]:
    """The uids an ``instance.create`` or a plan (``instance.create_many``) places on
    ``member``: the instances whose worker should look at them now."""
    items = [cmd.args] if cmd.type == "instance.create" else cmd.args.get("items", [])
    return [str(item["uid"]) for item in items if isinstance(item, dict) and item.get("uid")
            and (cmd.type == "instance.create" or item.get("location") == member)]


class NodeAgent:
    def __init__(self, member: str, store: Store, node: LocalNode,
                 boot_id: str | None = None) -> None:
        self.member = member
        self.store = store
        self.node = node
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._restocking: set[tuple[str, str, bool]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._boot_id = boot_id  # the host's, read from /proc unless given (tests)
        self._host_cache = ""
        self._ending: asyncio.Task[None] | None = None  # _end_migrations_left, one at a time
        # HA: replicas held here (shared with the API's facade); stale copies and
        # replicas are swept, and HA instances converged, only once a read barrier has
        # committed since start (the replica is current then). The self-fence
        # (node_agent/fencing) holds HA instances back and stops the shipper while the
        # lease is not held.
        self.replicas = HeldReplicas(node, self.ensure_image)
        self.sweeper = Sweeper(node, store, lambda: self.member, self.replicas)
        self.fencing = FenceGuard(lambda: self.member, store, node, node.paths.root)
        self.fencing.on_lift = self._resync  # start what the fence held back or stopped
        # What a host shutdown (SIGPWR) stopped here, started again when found stopped
        # (``host_shutdown``): read back from the daemon before.
        self.shutdown_marks = Marks(node.paths.root)

    async def start(self) -> None:
        queue = self.store.subscribe()
        self._boot()
        self._task = asyncio.create_task(self._watch(queue))
        self._heartbeat_task = asyncio.create_task(self._heartbeat())
        self._background.add(self.fencing.start())
        if self.node.vm_driver is not None:
            self._background.add(asyncio.create_task(guard_vms(self.node.vm_driver)))
        shipper = Shipper(lambda: self.member, self.store, self.node, self.fencing.fence.fenced)
        self._background.add(asyncio.create_task(shipper.run()))

    async def close(self) -> None:
        tasks = [t for t in [self._task, self._heartbeat_task, *self._workers.values(),
                             *self._background] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.sweeper.close()

    async def _heartbeat(self) -> None:
        """Tell the cluster this member is alive (the Raft leader commits OFFLINE once it
        has heard none for longer than ``cluster.offline_threshold`` on its own clock).
        Each acknowledged beat renews this member's fencing lease (``fencing``). Beats
        keep a fixed cadence: a slow commit does not stretch the gap to the next."""
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
                await self.fencing.beat(self.store.submit(
                    command("member.heartbeat", name=self.member, **extra),
                    timeout=HEARTBEAT_SUBMIT_TIMEOUT))
            due = max(due + HEARTBEAT_PERIOD, loop.time())
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

    def _boot(self) -> None:
        """Re-attach after a restart: converge every local instance. Whether its host
        rebooted meanwhile is the plan's to see (``converge.rebooted``)."""
        self._resync()

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
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that comes as
            # the queue yields an item, and close() then waited for this loop forever.
            change = None
            try:
                async with asyncio.timeout(max(0.0, next_resync - loop.time())):
                    change = await queue.get()
            except TimeoutError:
                pass
            if loop.time() >= next_resync:  # by the clock: heartbeats keep the feed busy
                next_resync = loop.time() + RESYNC_SECONDS
                await self._resync_now()
            if change is None or not change.result.ok:
                continue
            for uid in self._uids_of(change.command):
                self.kick(uid)
            if change.command.type == "intent.finish":  # a move may have left a half here
                self._look_for_migrations_left()

    async def _resync_now(self) -> None:
        self._resync()

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
        """Converge every local instance (a pass with nothing to do commits nothing), and
        end what live migrations a dead daemon left here."""
        with self.store.read() as state:
            uids = [i.uid for i in state.instances.values() if i.location == self.member]
        for uid in uids:
            self.kick(uid)
        self._look_for_migrations_left()
        self.sweeper.soon()

    def _look_for_migrations_left(self) -> None:
        if self.node.vm_driver is not None and (self._ending is None or self._ending.done()):
            self._ending = asyncio.create_task(self._end_migrations_left())
            self._background.add(self._ending)
            self._ending.add_done_callback(self._background.discard)

    async def _end_migrations_left(self) -> None:
        """End each half of a live migration that this member's QEMUs hold and nothing
        here follows any more (this daemon was killed while it sent or received a VM),
        the way the replicated state says the move ended (``migration_leftovers``). A
        failure is logged; the next resync tries again."""
        try:
            left = await asyncio.to_thread(self.node.vm_migrations_left)
        except Exception as exc:  # noqa: BLE001 - the next resync looks again
            log.warning("looking for interrupted live migrations failed: %s", exc)
            return
        for name, side in left:
            step = self._end_step(name, side)
            if not step:
                continue
            log.warning("VM %s holds the %s half of a live migration that this member no "
                        "longer follows: %s", name, side, step)
            try:
                await asyncio.to_thread(self.node.end_vm_migration, name, step)
            except Exception as exc:  # noqa: BLE001 - the next resync tries again
                log.error("VM %s: %s of an interrupted live migration failed: %s", name,
                          step, exc)

    def _end_step(self, name: str, side: Side) -> EndStep:
        with self.store.read() as state:
            inst = state.instances.get(name)
            return end_step(side, lives_here=inst is not None and inst.location == self.member,
                            held=inst is not None and bool(inst.intent))

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
                if await self.converge(uid):
                    self._dirty.add(uid)  # a failed step ended the pass early
        finally:
            self._workers.pop(uid, None)

    def _read(self, uid: str) -> _Pass | None:
        with self.store.read() as state:
            inst = state.instance_by_uid(uid)
            if inst is None or inst.location != self.member:
                return None
            seen = inst.observed
            record, reported, queue = desired_of_queue(
                Record(inst.name, inst.generation, inst.power == "Deleted", inst.spec_gen,
                       inst.name_gen, moving=bool(inst.moving_to)),
                Reported(seen.created, seen.name, seen.spec_gen), inst.pending)
            entries, restore, queue = snapshots_of_queue(
                {s.name: SnapWant(s.name, s.generation, s.ready, s.deleted, s.local)
                 for s in inst.snapshots.values()},
                (inst.restore_gen, inst.restore_snap), queue)
            snaps = () if inst.moving_to else plan_snapshots(
                tuple(entries.values()), *restore, seen.restore_gen)
            return _Pass(
                self._spec_of(state, inst), copy.deepcopy(queue), snaps,
                Want(inst.power, inst.boots, inst.generation, dict(inst.power_args or {}),
                     moving=bool(inst.moving_to)),
                Seen(seen.generation, seen.status, seen.boots, seen.host),
                record, reported, seen.error, ha_enabled(state, inst))

    async def converge(self, uid: str) -> bool:
        """One pass over ``uid``: the steps that bring its existence, name and spec to
        the record (``desired.plan_instance``), then its snapshots and restore
        (``desired_snapshots.plan_snapshots``), then power actions queued in a snapshot
        from before, then its power state, then at most one report. True if a failed step
        left other changes for another pass."""
        found = self._read(uid)
        if found is None:  # gone, or lives elsewhere now: not ours to start again
            await self._unmark(uid)
            return False
        if self.fencing.holds(found.ha):  # on_lift kicks it again
            return False
        spec, want, seen = found.spec, found.want, found.seen
        local = dc_replace(spec, name=local_name(found.record, found.reported))
        present = await asyncio.to_thread(self._present, spec, local)
        steps = plan_instance(found.record, found.reported, present)
        done: list[Step] = []
        for step in steps:
            error = MISSING if step.kind == "missing" else await self._step(spec, step)
            if error:
                return await self._failed(found, step, tuple(done), error)
            done.append(step)
        after = reached(found.record, found.reported, tuple(done))
        if found.record.deleted:
            await self._report(spec, want.generation, "", "Stopped", want.boots, after)
            await self._unmark(uid)
            return False
        snaps: list[SnapStep] = []
        for snap in found.snaps:
            error = await self._snap_step(spec, snap)
            if error:
                status = await asyncio.to_thread(self.node.status, spec.name, spec.type)
                await self._report(spec, snap.generation, error, status, seen.boots, after,
                                   tuple(snaps), snap)
                return snap.generation < want.generation
            snaps.append(snap)
        retry = await self._run_queue(found, after, tuple(snaps))
        if retry is not None:
            return retry
        if self.fencing.holds(found.ha):
            return False
        again = self.fencing.stopped_by_fence(spec.name) or spec.uid in self.shutdown_marks
        power, status, error, self_stopped = await asyncio.to_thread(
            self._converge_power, spec, want, seen, self._host, again)
        if again and not error:
            self.fencing.restarted(spec.name)
            await self._unmark(spec.uid)
        if found.ha and "start" in power:  # in the lease file at once, for the watchdog
            await self.fencing.refresh()
        if self_stopped:
            if done or snaps:
                await self._report(spec, seen.generation, "", status, seen.boots, after,
                                   tuple(snaps))
            await self.store.submit(command("instance.observe_status", uid=spec.uid,
                                            status="Stopped"))
            await self._delete_if_ephemeral(spec)
            return False
        if not (done or snaps or power or found.actions) and (
                seen.generation >= want.generation):
            return False
        await self._report(spec, want.generation, error, status,
                           seen.boots if error else want.boots, after, tuple(snaps))
        if "stop" in power and not error:
            await self._delete_if_ephemeral(spec)
        return False

    async def _unmark(self, uid: str) -> None:
        if uid in self.shutdown_marks:
            await asyncio.to_thread(self.shutdown_marks.drop, uid)

    async def stop_for_host_shutdown(self, total: float = TOTAL_SECONDS) -> list[Outcome]:
        """Stop every instance that runs on this member, cleanly and in parallel, for a
        host shutdown (``host_shutdown``), leaving the desired state as it is. Call it once
        ``close`` has returned, so no worker converges or reports meanwhile."""
        with self.store.read() as state:
            targets = []
            for inst in state.instances.values():
                if inst.location == self.member and inst.power != "Deleted":
                    config = self._spec_of(state, inst).config
                    targets.append(Target(inst.uid, inst.observed.name or inst.name,
                                          inst.type, own_timeout(config)))
        return await asyncio.to_thread(shut_down, self.node, self.shutdown_marks, targets,
                                       total)

    def _present(self, spec: InstanceSpec, local: InstanceSpec) -> bool:
        """Whether the host has the instance, under its local or its record's name."""
        return self.node.has_volume(local) or (
            local.name != spec.name and self.node.has_volume(spec))

    async def _step(self, spec: InstanceSpec, step: Step) -> str:
        """Carry out one step of ``plan_instance``; its error ("" if none)."""
        if step.kind == "delete":
            return await self._run_action(dc_replace(spec, name=step.old),
                                          Action(step.generation, "delete"))
        args = {"old": step.old, "new": spec.name} if step.kind == "rename" else {}
        return await self._run_action(spec, Action(step.generation, step.kind, args))

    async def _snap_step(self, spec: InstanceSpec, step: SnapStep) -> str:
        """Carry out one step of ``plan_snapshots``; its error ("" if none). A delete
        removes the snapshot under both names, a restore finds it under either (a rename
        may be done and not reported)."""
        if step.kind == "snapshot_delete":
            for name in step.names:
                error = await self._run_action(spec, Action(
                    step.generation, step.kind, {"snapshot": name}))
                if error:
                    return error
            return ""
        args: dict[str, Any] = {"snapshot": step.snapshot}
        if step.kind == "snapshot_rename":
            args = {"old": step.old, "new": step.snapshot}
        elif step.kind == "restore":
            args = {"snapshot": step.snapshot, "old": step.old, "gone_ok": step.gone_ok}
        return await self._run_action(spec, Action(step.generation, step.kind, args))

    async def _failed(self, found: _Pass, step: Step, done: tuple[Step, ...],
                      error: str) -> bool:
        """Report ``step``'s failure against the generation that asked for it."""
        spec, want, seen = found.spec, found.want, found.seen
        if step.kind == "missing" and found.error == error and (
                seen.generation >= want.generation):
            return False  # reported already
        after = reached(found.record, found.reported, done, step)
        if step.kind == "create":
            after = dc_replace(after, created=False)  # apply drops the record
        status = await asyncio.to_thread(self.node.status, spec.name, spec.type)
        await self._report(spec, step.generation, error, status, seen.boots, after)
        return step.generation < want.generation

    async def _run_queue(self, found: _Pass, after: Reported,
                         snaps: tuple[SnapStep, ...]) -> bool | None:
        """Carry out the power actions queued in a snapshot from before, once, in
        generation order. None if all went well, else (the failure reported) whether
        other changes are left for another pass."""
        spec, want, seen = found.spec, found.want, found.seen
        for act in found.actions:
            error = await self._run_action(spec, act)
            if error:
                status = await asyncio.to_thread(self.node.status, spec.name, spec.type)
                await self._report(spec, act.generation, error, status, seen.boots, after,
                                   snaps)
                return act.generation < want.generation
        return None

    def _converge_power(self, spec: InstanceSpec, want: Want, seen: Seen, host: str,
                        fenced: bool) -> tuple[tuple[str, ...], str, str, bool]:
        """The power steps, carried out (blocking): (steps, status after, error,
        stopped by itself). ``fenced``: a fence stopped it here (start it again)."""
        status = self.node.status(spec.name, spec.type)
        plan = plan_power(want, seen, status, host, fenced)
        if not plan.steps:
            return (), status, "", plan.self_stopped
        error = ""
        try:
            for step in plan.steps:
                perform(self.node, spec, step, want.args)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, not raised
            log.warning("%s %s failed: %s", "+".join(plan.steps), spec.name, exc)
            error = str(exc) or type(exc).__name__
        return plan.steps, self.node.status(spec.name, spec.type), error, False

    @property
    def _host(self) -> str:
        if not self._host_cache:
            self._host_cache = host_token(self.member, self._boot_id or _boot_id())
        return self._host_cache

    async def _report(self, spec: InstanceSpec, generation: int, error: str, status: str,
                      boots: int, after: Reported | None = None,
                      snaps: tuple[SnapStep, ...] = (), failed: SnapStep | None = None
                      ) -> None:
        # If this commit fails the work stays unreported; the resync converges again
        # (steps are idempotent) and reports then.
        extra: dict[str, Any] = {} if after is None else {
            "created": after.created, "name": after.name or spec.name,
            "spec_gen": after.spec_gen}
        if snaps:
            extra["snapshots"] = [_wire(step) for step in snaps]
        if failed is not None:
            extra["snapshot_failed"] = _wire(failed)
        await self.store.submit(command("instance.observed", uid=spec.uid,
                                        generation=generation, status=status, error=error,
                                        boots=boots, host=self._host, **extra))

    @staticmethod
    def _spec_of(state: Any, inst: Instance) -> InstanceSpec:
        config, devices = expanded(state, inst.config, inst.devices, inst.profiles)
        return InstanceSpec(inst.uid, inst.name, inst.image, dict(config),
                            copy.deepcopy(devices), inst.type, inst.epoch, inst.from_replica)

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

    async def _run_action(self, spec: InstanceSpec, act: Action) -> str:
        """Carry out one step; its error ("" if none). A power action queued in a
        snapshot from before power was desired state runs once this way too."""
        error = ""
        try:
            # a failover needs no image, but a VM boots from the image's kernel
            if act.kind == "create" and (not spec.from_replica or spec.is_vm):
                await self.ensure_image(spec.image)
            await asyncio.to_thread(perform, self.node, spec, act.kind, act.args)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, not raised
            log.warning("%s %s failed: %s", act.kind, spec.name, exc)
            error = str(exc) or type(exc).__name__
        if act.kind == "create" and not error and not spec.is_vm and not spec.from_replica:
            self.restock(spec)
        if act.kind == "stop" and not error:  # a queued stop (older snapshot)
            await self._delete_if_ephemeral(spec)
        return error


@dataclass(frozen=True)
class _Pass:
    """What one convergence pass works from, read at once from the replica."""

    spec: InstanceSpec
    actions: list[Action]  # power actions queued in a snapshot from before (``Action``)
    snaps: tuple[SnapStep, ...]  # plan_snapshots: the record's snapshot changes
    want: Want
    seen: Seen
    record: Record
    reported: Reported
    error: str  # the last report's
    ha: bool  # cluster.ha=restart: never started while this member is fenced


def _wire(step: SnapStep) -> list[Any]:
    """A snapshot step as the report carries it (``apply_snapshots``)."""
    return [step.kind, step.generation, step.snapshot, step.old]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
