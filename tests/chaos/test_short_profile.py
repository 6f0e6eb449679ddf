"""The chaos suite: a real dev cluster, clients hopping between its members (profiles,
config, containers) while a nemesis injects every kind of fault of ``faults.py``; then
every acknowledged write must be on every member, every key's history linearizable, the
replicas equal, and writes accepted again within 10 s of the last heal.

Short profile (CI, ``make test``): 3 members, at least 200 operations and 10 faults.
Long profile (``make chaos``, ``CORRAL_CHAOS=long``): 3 and 5 members, at least 1,000
operations and 50 faults each."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cluster.state.policy import COMPACTION_SECONDS_ENV
from tests.chaos.checker import check, summarize
from tests.chaos.run import (
    LONG,
    SHORT,
    converge,
    final_states,
    play,
    replicas_agree,
    roll_call,
)
from tests.cluster.conftest import namespace_cluster

pytestmark = pytest.mark.real

LONG_RUN = os.environ.get("CORRAL_CHAOS") == "long"
SIZES = [3, 5] if LONG_RUN else [3]
COMPACTION_SECONDS = 20


@pytest.mark.timeout(1200 if LONG_RUN else 300)  # the short one: 5 minutes in CI at most
@pytest.mark.parametrize("size", SIZES)
def test_no_acknowledged_write_is_lost_and_every_key_is_linearizable(
        size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = LONG if LONG_RUN else SHORT
    # Members compact their logs every 20 s (not 300 s), so that snapshots exist to be
    # damaged and sent while the nemesis restarts members (cluster/state/policy.py).
    monkeypatch.setenv(COMPACTION_SECONDS_ENV, str(COMPACTION_SECONDS))
    started = time.monotonic()
    with namespace_cluster(size) as members:
        run = play(members, profile)
        print("\n" + "\n".join(run.log))
        convergence = converge(run)
        if convergence is None:
            print("no convergence:\n" + "\n".join(roll_call(run)))
        final, unserved = final_states(members)
        history = run.recorder.history(final=final)
        logs = Path("/tmp/corral-cluster-logs")
        logs.mkdir(exist_ok=True)
        history.dump(logs / f"chaos-history-{size}.json")
        agree = replicas_agree(members[0])
    summary = summarize(check(history), run.faults, agree, convergence)
    assert run.nemesis is not None
    print(f"fault kinds: {dict(sorted(run.nemesis.done.items()))}")
    print(f"{size} members:", summary.line(), f"({time.monotonic() - started:.0f} s)")
    assert summary.report.operations >= profile.min_ops
    assert run.faults >= profile.min_faults
    assert summary.ok and not unserved, "\n".join(unserved + summary.failures)
