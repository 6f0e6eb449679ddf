"""Waiting for an agent's report on one real RaftStore: the report of the awaited
generation ends the wait, an error in it is raised typed, and no report times out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cluster.state import waiters
from cluster.state.commands import command
from tests.unit.test_raft_store import _address, _bootstrapped

FP = "f" * 64


def test_a_report_ends_the_wait_and_an_error_is_raised_typed(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await _bootstrapped(tmp_path, _address())
        try:
            await store.submit(command("image.add", fingerprint=FP,
                                       info={"type": "container"}, member="m1"))
            created = await store.submit(command(
                "instance.create", uid="u1", name="c1", location="m1", image=FP,
                profiles=["default"]))
            generation = int(created["generation"])
            queue = store.subscribe()
            try:
                with pytest.raises(waiters.WaitTimedOut):
                    await waiters.wait_generation(store, queue, "u1", generation, 0.3)
                wait = asyncio.create_task(
                    waiters.wait_generation(store, queue, "u1", generation, 10.0))
                await store.submit(command("instance.observed", uid="u1",
                                           generation=generation, status="Stopped", error=""))
                await wait
                started = await store.submit(command("instance.action", name="c1",
                                                     action="start"))
                failing = asyncio.create_task(waiters.wait_generation(
                    store, queue, "u1", int(started["generation"]), 10.0))
                await store.submit(command("instance.observed", uid="u1",
                                           generation=started["generation"],
                                           status="Stopped", error="no bridge"))
                with pytest.raises(waiters.AgentFailed, match="no bridge") as failed:
                    await failing
                assert failed.value.code == 400
                # Already reported: answered from the replica without waiting.
                with pytest.raises(waiters.AgentFailed, match="no bridge"):
                    await waiters.wait_generation(store, queue, "u1",
                                                  int(started["generation"]), 0.1)
            finally:
                store.unsubscribe(queue)
        finally:
            await store.close()

    asyncio.run(scenario())
