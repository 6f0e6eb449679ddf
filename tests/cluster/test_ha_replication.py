"""HA replication between two real members in namespaces.

A container with ``cluster.ha=restart`` runs on m1; the leader's HA controller makes m2
its replica holder; m1's shipper sends snapshots of its volume to m2 every interval and
reports them. A file written inside the container is in a replica m2 holds that the
state reports synced after the write. A PUT from a source under a stale placement epoch,
or from a member that is not the instance's, is refused (409) before a byte is taken,
and m2 holds nothing more afterwards.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster.transport.peers import peer_session
from devtools.harness import DaemonProcess
from tests.cluster.conftest import namespace_cluster
from tests.integration.api import Api

pytestmark = pytest.mark.real
NAME = "hr1"
INTERVAL = "1"  # cluster.ha.replication_interval (s)


def _until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.2)
    return found


def _replica(daemon: DaemonProcess) -> dict[str, Any]:
    """The instance's replica on m2 as the state reports it ({} before one)."""
    status, doc = Api(str(daemon.socket)).call("GET", f"/1.0/instances/{NAME}")
    replicas = ((doc.get("metadata") or {}).get("ha") or {}).get("replicas", []) \
        if status == 200 else []
    return next((r for r in replicas if r.get("member") == "m2" and r.get("snapshot")), {})


def _held(holder: DaemonProcess) -> dict[str, Path]:
    """The complete replica snapshots on the holder's pool, by name."""
    return {snap.name: snap for uid in (holder.root / "storage-pools" / "default"
                                        / "replicas").glob("*")
            for snap in uid.glob("r*")}


def _moment(snapshot: str) -> float:
    return int(snapshot[1:]) / 1e9


def _found_after(holder: DaemonProcess, written: float, token: str) -> list[str]:
    """The snapshots held that began after ``written`` and have the token's file."""
    found = []
    for name, path in _held(holder).items():
        try:
            if _moment(name) > written and (
                    path / "rootfs" / "marker").read_text().strip() == token:
                found.append(name)
        except FileNotFoundError:  # dropped meanwhile (the holder keeps the newest 2)
            continue
    return found


async def _offer(root: Path, url: str, **query: str) -> tuple[int, str]:
    async with peer_session(root, timeout=30) as session, session.put(
            url, params=query, data=b"not a replica stream",
            headers={"X-Corral-Forwarded": "1"}) as resp:
        doc = await resp.json(content_type=None)
        return resp.status, str(doc.get("error", ""))


def test_an_ha_containers_writes_reach_its_holder_and_stale_sources_are_refused() -> None:
    with namespace_cluster(2) as (m1, m2):
        m1.corral("image", "build", "busybox", timeout=300)
        m1.corral("launch", "busybox", NAME, "--target", "m1", "-c", "cluster.ha=restart",
                  "-c", f"cluster.ha.replication_interval={INTERVAL}", timeout=180)
        try:
            first = _until(lambda: _replica(m1), 60, "a first replica on m2")
            assert first["epoch"] == 0 and first["bytes"] > 0
            token = secrets.token_hex(8)
            m1.corral("exec", NAME, "--", "sh", "-c", f"echo {token} > /marker")
            written = time.time()  # one clock: the namespaces share the host's
            _until(lambda: _moment(_replica(m1).get("snapshot", "r0")) > written, 30,
                   "a replica reported synced after the write")
            assert _until(lambda: _found_after(m2, written, token), 10,
                          "the file in a replica held on m2")

            url = Api(str(m1.socket)).ok("GET", "/1.0/cluster/members/m2")["url"]
            uid = next(iter((m2.root / "storage-pools" / "default" / "replicas").glob("*"))).name
            url = f"{url}/internal/ha-replicas/{uid}"
            offer = {"snapshot": f"r{time.time_ns() + 10**12:020d}", "parent": ""}
            stale = asyncio.run(_offer(m1.root, url, **offer, source="m1",
                                       placement_epoch="1"))
            assert stale[0] == 409 and "Stale placement epoch 1" in stale[1], stale
            wrong = asyncio.run(_offer(m1.root, url, **offer, source="m2",
                                       placement_epoch="0"))
            assert wrong[0] == 409 and "lives on m1, not m2" in wrong[1], wrong
            assert offer["snapshot"] not in _held(m2)
        finally:
            m1.corral("delete", "--force", NAME, timeout=120)
        _until(lambda: not _held(m2), 30, "m2 drops the replicas of the deleted instance")
