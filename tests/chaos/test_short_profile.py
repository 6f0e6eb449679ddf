"""The chaos suite's short profile, in CI: 3 members, 3 clients hopping between them, at
least 200 operations and 10 faults (kill -9 of leader and followers, SIGSTOP, the leader
and a follower cut off) while they write; then every acknowledged write must be on every
member, every key's history linearizable, the replicas equal, and writes accepted again
within 10 s of the last heal. The long profile: ``make chaos``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.chaos.checker import check, summarize
from tests.chaos.run import LONG, SHORT, converge, final_state, play, replicas_agree
from tests.cluster.conftest import namespace_cluster

pytestmark = pytest.mark.real


def test_no_acknowledged_write_is_lost_and_every_key_is_linearizable() -> None:
    profile = LONG if os.environ.get("CORRAL_CHAOS") == "long" else SHORT
    started = time.monotonic()
    with namespace_cluster(3) as members:
        run = play(members, profile)
        convergence = converge(run)
        history = run.recorder.history(final={m.root.name: final_state(m) for m in members})
        logs = Path("/tmp/corral-cluster-logs")
        logs.mkdir(exist_ok=True)
        history.dump(logs / "chaos-history.json")
        agree = replicas_agree(members[0])
    summary = summarize(check(history), run.faults, agree, convergence)
    print("\n" + "\n".join(run.log))
    print(summary.line(), f"({time.monotonic() - started:.0f} s)")
    assert summary.report.operations >= profile.min_ops
    assert run.faults >= profile.min_faults
    assert summary.ok, "\n".join(summary.failures)
