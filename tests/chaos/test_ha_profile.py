"""The HA chaos profile: 3 HA containers counting in their rootfs and an HA VM counting on
its root disk (QEMU, TCG here) on a real 3-member cluster, and a host running some of
them killed whole (then started again), cut off both ways (then healed) and its daemon
frozen with SIGSTOP (then continued), each held until its HA instances run elsewhere
(``ha_run.py``). The first round's three faults each hit the VM's host, so the VM fails
over once per fault kind. Then ``ha_checker``: no instance ever on two hosts in /proc
(a container's ``[lxc monitor]``, the VM's QEMU), each failover's counter within one
replication interval plus the detection time of the old copy's last write, no returned
host running an instance that left it. One round of the three faults (a few minutes on
2 cores); three with ``CORRAL_CHAOS=long`` (``make chaos``)."""

from __future__ import annotations

import os
import time

import pytest

from tests.chaos.ha_checker import check
from tests.chaos.ha_run import FAULTS, play
from tests.cluster.conftest import namespace_cluster

pytestmark = pytest.mark.real

ROUNDS = 3 if os.environ.get("CORRAL_CHAOS") == "long" else 1  # make chaos: 3 rounds


@pytest.mark.timeout(300 * ROUNDS)  # a round: about 75 s on 2 cores, VM included
def test_ha_instances_never_run_twice_lose_at_most_an_interval_and_never_come_back() -> None:
    started = time.monotonic()
    with namespace_cluster(3) as members:
        run = play(members, ROUNDS)
        print("\n" + "\n".join(run.log))
    report = check(run.samples, run.failovers, run.returns)
    print("3 members:", report.line(run.faults), f"({time.monotonic() - started:.0f} s)")
    failures = run.problems + [f"{v.check}: {v.detail}" for v in report.violations]
    assert run.faults == len(FAULTS) * ROUNDS, failures
    assert report.failovers == len(run.failovers) >= run.faults, failures
    assert report.samples > 0 and not failures, "\n".join(failures)
