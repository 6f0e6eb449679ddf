"""Live migration of a running VM between members, driven by the member that got the
request (the halves run on the two members: ``cluster/api/handlers/migration.py``).

``instance.move_begin`` with ``live`` (apply re-checks the target and reserves there) ->
the target starts a paused QEMU waiting for the VM and exports its new disk over NBD ->
the source mirrors its disk there, then migrates RAM (QEMU's ``migrate``, downtime limit
``migration.downtime``) and pauses -> ``move_end`` (the VM lives on the target) -> the
target runs the guest -> the source quits its QEMU and deletes its files. Until
``move_end`` commits, any failure resumes the guest on the source and drops the target's
copy: the VM never stops running.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from cluster.api.context import Context
from cluster.api.handlers.migration import migration_downtime
from cluster.api.response import ApiError
from cluster.state.commands import command

log = logging.getLogger(__name__)
FORWARDED = {"X-Corral-Forwarded": "1"}
MIGRATION_TIMEOUT = 900  # seconds for the whole disk + RAM transfer


async def live_migrate(ctx: Context, name: str, target: str, source_address: str,
                       target_address: str, *, requested: str = "", origin: str | None = None,
                       progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Migrate the running VM ``name`` to ``target``; returns QEMU's figures (total and
    downtime in ms, bytes of RAM and disk)."""
    with ctx.store.read() as state:
        inst = state.instances.get(name)
        if inst is None:
            raise ApiError(404, "Instance not found")
        uid, downtime = inst.uid, migration_downtime(inst.config)
    await ctx.store.submit(command("instance.move_begin", name=name, uid=uid, target=target,
                                   requested=requested or target, live=True))
    base = f"/internal/instances/{name}/migration"
    query = f"?uid={uid}"
    try:
        doc = await _call(ctx, "POST", f"https://{target_address}{base}/incoming{query}")
        incoming = doc["metadata"]["incoming"]
        stats = await _send(ctx, f"https://{source_address}{base}/outgoing{query}",
                            {"incoming": incoming, "downtime_ms": downtime}, progress)
    except BaseException as exc:
        log.warning("live migration of %s to %s failed: %s", name, target, exc)
        await _quietly(ctx, "DELETE", f"https://{target_address}{base}/incoming{query}")
        await _abort(ctx, name, uid)
        raise
    try:
        await ctx.store.submit(command("instance.move_end", name=name, uid=uid, target=target,
                                       origin=origin))
    except BaseException:
        # The RAM went over but the move was not committed: the guest runs on here.
        await _quietly(ctx, "POST", f"https://{source_address}{base}/outgoing/resume{query}")
        await _quietly(ctx, "DELETE", f"https://{target_address}{base}/incoming{query}")
        await _abort(ctx, name, uid)
        raise
    await _call(ctx, "POST", f"https://{target_address}{base}/incoming/finish{query}")
    await _quietly(ctx, "DELETE", f"https://{source_address}{base}/outgoing{query}")
    log.info("live-migrated %s to %s in %s ms (downtime %s ms)", name, target,
             stats.get("total_ms"), stats.get("downtime_ms"))
    return stats


async def _call(ctx: Context, method: str, url: str) -> dict[str, Any]:
    async with ctx.peer_session(timeout=120) as session:
        async with session.request(method, url, headers=FORWARDED) as resp:
            doc: dict[str, Any] = await resp.json(content_type=None)
            if resp.status >= 300:
                raise ApiError(resp.status if resp.status < 500 else 500,
                               f"live migration: {doc.get('error') or resp.status}")
            return doc


async def _send(ctx: Context, url: str, body: dict[str, Any],
                progress: Callable[[int], None] | None) -> dict[str, Any]:
    """The source's stream of progress lines, to its last line (``done`` or ``error``)."""
    async with ctx.peer_session(timeout=MIGRATION_TIMEOUT) as session:
        async with session.post(url, json=body, headers=FORWARDED) as resp:
            if resp.status != 200:
                doc = await resp.json(content_type=None)
                raise ApiError(resp.status, f"the source refused to migrate: "
                                            f"{doc.get('error')}")
            async for line in resp.content:
                report = json.loads(line)
                if "error" in report:
                    raise ApiError(500, f"live migration failed: {report['error']}")
                if "done" in report:
                    stats: dict[str, Any] = report["done"]
                    return stats
                step = report.get("progress", {})
                if progress is not None:
                    progress(int(step.get("ram_transferred", 0)) + int(step.get("disk_done", 0)))
    raise ApiError(500, "the source member stopped answering during the live migration")


async def _quietly(ctx: Context, method: str, url: str) -> None:
    """A clean-up call: its failure is logged; the original error is what counts."""
    try:
        await _call(ctx, method, url)
    except Exception as exc:  # noqa: BLE001
        log.error("live migration clean-up %s %s: %s", method, url, exc)


async def _abort(ctx: Context, name: str, uid: str) -> None:
    try:
        await ctx.store.submit(command("instance.move_abort", name=name, uid=uid))
    except Exception as exc:  # noqa: BLE001 - the original failure is what the caller sees
        log.error("freeing the target of the failed migration of %s: %s", name, exc)
