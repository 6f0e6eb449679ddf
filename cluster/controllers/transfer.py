"""The calls a move's controller makes to the two members (their member-only internal
endpoints: ``handlers/volumes.py`` and ``handlers/migration.py``), over the leader's
pooled mutual-TLS session. Each clean-up call here is safe to repeat: a new leader
repeats whatever a dead one may or may not have done.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from cluster.controllers.runtime import Lease

log = logging.getLogger(__name__)
FORWARDED = {"X-Corral-Forwarded": "1"}
MIGRATION_TIMEOUT = 900  # seconds for the whole disk + RAM transfer of a live move


class TransferFailed(Exception):
    """A member refused or failed its half of a move; the message says why."""


def addresses(lease: Lease, *members: str) -> list[str]:
    with lease.store.read() as state:
        found = []
        for name in members:
            member = state.members.get(name)
            if member is None or not member.address:
                raise TransferFailed(f"Cluster member {name!r} is not reachable")
            found.append(member.address)
    return found


def _volume_url(address: str, name: str, uid: str) -> str:
    return f"https://{address}/internal/instances/{name}/volume?uid={uid}"


async def precopy(lease: Lease, name: str, uid: str, source: str, target: str,
                  ) -> float | None:
    """Have the target copy the volume of the running container; the time the copy
    began (on the source's clock), or None if it failed (the move then copies all)."""
    url = _volume_url(target, name, uid) + f"&source={source}&precopy=1"
    started = time.monotonic()
    try:
        async with lease.peer_session().post(url, headers=FORWARDED) as resp:
            doc = await resp.json(content_type=None)
            if resp.status != 200:
                raise TransferFailed(str(doc.get("error")))
            log.info("pre-copied %s to %s in %.2f s (%s)", name, target,
                     time.monotonic() - started,
                     "on a spare of its image" if doc.get("spare") else "whole")
            return float(doc["since"])
    except Exception as exc:  # noqa: BLE001 - a pre-copy only saves time
        log.warning("pre-copying %s to %s failed (%s); it will be copied whole", name,
                    target, exc)
        return None


async def pull(lease: Lease, name: str, uid: str, source: str, target: str,
               progress: Callable[[int], None], since: float | None = None) -> None:
    """The target pulls the volume (or what changed ``since``) from the source."""
    url = _volume_url(target, name, uid) + f"&source={source}"
    if since is not None:
        url += f"&since={since:.6f}"
    async with lease.peer_session().post(url, headers=FORWARDED) as resp:
        if resp.status != 200:
            doc = await resp.json(content_type=None)
            raise TransferFailed(f"the target refused the volume: {doc.get('error')}")
        async for line in resp.content:
            report = json.loads(line)
            if "error" in report:
                raise TransferFailed(f"copying the volume of {name} failed: "
                                     f"{report['error']}")
            progress(int(report.get("bytes", report.get("done", 0))))
            if "done" in report:
                return
    raise TransferFailed(f"the target stopped answering while copying {name}")


async def drop_copy(lease: Lease, name: str, uid: str, address: str,
                    incoming: bool = False) -> None:
    """Drop a member's copy (``incoming``: what a move brought there and did not finish).
    A failure is logged only: a leftover copy is garbage, not a failed move."""
    url = _volume_url(address, name, uid) + ("&incoming=1" if incoming else "")
    try:
        async with lease.peer_session(timeout=120).delete(url, headers=FORWARDED) as resp:
            if resp.status not in (200, 404, 409):
                log.warning("member %s kept a copy of %s: %s", address, name,
                            await resp.text())
    except Exception as exc:  # noqa: BLE001
        log.warning("member %s kept a copy of %s: %s", address, name, exc)


def _migration_url(address: str, name: str, uid: str, tail: str) -> str:
    return f"https://{address}/internal/instances/{name}/migration/{tail}?uid={uid}"


async def migration_call(lease: Lease, method: str, address: str, name: str, uid: str,
                         tail: str) -> dict[str, Any]:
    url = _migration_url(address, name, uid, tail)
    async with lease.peer_session(timeout=120).request(method, url, headers=FORWARDED) as resp:
        doc: dict[str, Any] = await resp.json(content_type=None)
        if resp.status >= 300:
            raise TransferFailed(f"live migration: {doc.get('error') or resp.status}")
        return doc


async def quietly(lease: Lease, method: str, address: str, name: str, uid: str,
                  tail: str) -> bool:
    """A clean-up call: its failure is logged; whether it succeeded is returned."""
    try:
        await migration_call(lease, method, address, name, uid, tail)
        return True
    except Exception as exc:  # noqa: BLE001
        log.error("live migration clean-up %s %s of %s: %s", method, tail, name, exc)
        return False


async def send(lease: Lease, source: str, name: str, uid: str, body: dict[str, Any],
               progress: Callable[[int], None]) -> dict[str, Any]:
    """The source's stream of progress lines, to its last line (``done`` or ``error``)."""
    url = _migration_url(source, name, uid, "outgoing")
    session = lease.peer_session(timeout=MIGRATION_TIMEOUT)
    async with session.post(url, json=body, headers=FORWARDED) as resp:
        if resp.status != 200:
            doc = await resp.json(content_type=None)
            raise TransferFailed(f"the source refused to migrate: {doc.get('error')}")
        async for line in resp.content:
            report = json.loads(line)
            if "error" in report:
                raise TransferFailed(f"live migration failed: {report['error']}")
            if "done" in report:
                stats: dict[str, Any] = report["done"]
                return stats
            step = report.get("progress", {})
            progress(int(step.get("ram_transferred", 0)) + int(step.get("disk_done", 0)))
    raise TransferFailed("the source member stopped answering during the live migration")
