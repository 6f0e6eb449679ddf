"""A scale simulator of the scheduler: N simulated members, M instances.

    python -m simulator.simulate --members N --instances M [--raft 3] [--seed S]
                                 [--planners K] [--window W] [--plan-size P]
                                 [--planner-on leader|follower|followers] [--gc default|freeze]
                                 [--what-if SETTING=VALUE] [--snapshot]

Members and instances come from the :class:`~simulator.fake_driver.FakeDriver` (simulated
hosts of varied capacity, containers of varied limits; nothing runs). The cluster is built
with the real commands (``cluster.bootstrap``, ``image.add``, ``join_token.add``,
``member.join``) and every instance is placed by the ``IndexedScheduler``:

* without ``--raft`` (pure): planning only. Each plan is committed into the planner's
  ``ClusterView``; the figure is placement decisions per second in one process.
* with ``--raft 3``: each plan is committed through a real 3-voter pysyncobj cluster on
  loopback (``RaftStore``, one voter per process; see ``simulator.sim_raft``), each plan
  of ``--plan-size`` placements as one ``instance.create_many`` (a plan of many
  allocations, as Nomad commits them) with ``location`` set, so apply re-validates every
  placement; a placement apply refuses is planned again.

With ``--raft`` a progress line goes to stderr every 10 s. The last line printed is
``placements/s: X``.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from typing import Any, TextIO

from cluster.state.apply import apply
from cluster.state.cluster_view import view_from_state
from cluster.state.model import State
from corral_shared.resources import GiB
from simulator.fake_driver import FakeDriver
from simulator.sim_raft import DEFAULT_PLAN_SIZE, DEFAULT_WINDOW, PLANNER_ON, RaftOptions, run_raft
from simulator.sim_workload import Placer, Report, Tally, setup_phases


def run_pure(members: int, instances: int, seed: int = 0, record: bool = False) -> Report:
    """Place ``instances`` on ``members`` with the IndexedScheduler, committing each plan
    into its view; ``record`` keeps where each instance went (``tally.where``)."""
    begun = time.perf_counter()
    driver = FakeDriver(seed)
    hosts = driver.members(members)
    state = State()
    now = time.time()
    for phase in setup_phases(hosts, now):
        for cmd in phase:
            result = apply(state, cmd)
            if not result.ok:
                raise RuntimeError(f"setting the simulated cluster up failed: {result.error}")
    placer = Placer(view_from_state(state), Placer.default_profile(state))
    specs = list(driver.instances(instances))
    requests = [placer.request(spec) for spec in specs]
    tally = Tally(where={} if record else None)
    setup = time.perf_counter() - begun
    started = time.perf_counter()
    for spec, request in zip(specs, requests, strict=True):
        plan = placer.place(request)
        if plan.member is None:
            tally.refuse(spec.name, plan.error)
        else:
            placer.commit(plan.member, request)
            tally.place(spec.name, plan.member)
    seconds = time.perf_counter() - started
    return Report("pure", members, instances, seed, tally, seconds=seconds,
                  setup_seconds=setup, total_seconds=time.perf_counter() - begun)


def _size(value: float) -> str:
    if value >= GiB:
        return f"{value / GiB:.2f} GiB"
    return f"{value / 2**20:.0f} MiB" if value >= 2**20 else f"{value / 2**10:.0f} KiB"


def print_report(report: Report, out: TextIO | None = None) -> None:
    """The figures, one per line; the last line is ``placements/s: X``."""
    def write(line: str) -> None:
        print(line, file=out)

    tally = report.tally
    mode = "pure placement (IndexedScheduler, one process)" if report.mode == "pure" else \
        "Raft: 3 voters on loopback, one process each, real instance.create apply"
    write(f"# simulator.simulate: {report.members} members, {report.instances} instances, "
          f"seed {report.seed}; {mode}")
    write(f"{'setup':34s} {report.setup_seconds:10.2f} s")
    write(f"{'placements done':34s} {tally.placed:10d}")
    write(f"{'refused (with the reason)':34s} {len(tally.refused):10d}")
    for reason, count in tally.reasons().most_common(3):
        write(f"  {count:8d} x {reason}")
    write(f"{'re-planned (refused by apply)':34s} {tally.replanned:10d}")
    write(f"{'time (placing)':34s} {report.seconds:10.2f} s")
    write(f"{'time (whole run)':34s} {report.total_seconds:10.2f} s")
    for name, rss in report.rss.items():
        write(f"RSS of {name:38s} {_size(rss):>12s}")
    for name, rss in report.peak_rss.items():
        write(f"peak RSS of {name:33s} {_size(rss):>12s}")
    for name, cpu in report.cpu.items():
        write(f"CPU time of {name:33s} {cpu:10.1f} s")
    if report.digests:
        agree = len(set(report.digests.values())) == 1
        write(f"{'replicas agree':34s} {'yes' if agree else 'NO':>10s}")
        for name, digest in report.digests.items():
            write(f"  state of {name}: {digest}")
    if report.marks:
        agree = len({text.split()[0] for text in report.marks.values()}) == 1
        write(f"{'replica.mark digests agree':34s} {'yes' if agree else 'NO':>10s}")
        for name, text in report.marks.items():
            write(f"  {name}: {text}")
    for name, count in report.compacted.items():
        write(f"log compactions (dumps) of {name:19s} {count:10d}")
    for name, term in report.terms.items():
        write(f"Raft term at the end, {name:23s} {term:10d}")
    for at, name, what, took in sorted(report.events):
        write(f"  at {at - report.placing_from:7.1f} s {name.split()[0]}: {what} ({took:.3f} s)")
    for name, stall in report.stalls.items():
        write(f"longest compaction step in Raft, {name:14s} {stall:10.3f} s")
    for name, size in report.journal.items():
        write(f"journal at the end of {name:23s} {_size(size):>12s}")
    for key, value in report.snapshot.items():
        shown = _size(value) if key.endswith("bytes") else f"{value:.2f} s"
        write(f"{'snapshot: ' + key:34s} {shown:>12s}")
    for note in report.notes:
        write(f"note: {note}")
    write(f"placements/s: {report.placements_per_second:.0f}")


def parse_setting(text: str) -> tuple[str, Any]:
    """``"logCompactionMinTime=3600"`` -> ``("logCompactionMinTime", 3600)``."""
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--what-if wants SETTING=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.simulate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, required=True)
    parser.add_argument("--instances", type=int, required=True)
    parser.add_argument("--raft", type=int, choices=(3,), default=None,
                        help="commit every placement through a 3-voter Raft cluster")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--planners", type=int, default=1,
                        help="Raft: concurrent planners, each with its own view (their "
                             "conflicting plans are refused by apply and re-planned)")
    parser.add_argument("--window", type=int, default=0,
                        help="Raft: placements in flight (default: automatic)")
    parser.add_argument("--plan-size", type=int, default=0,
                        help="Raft: placements per instance.create_many command (1: one "
                             "instance.create per placement; default: automatic)")
    parser.add_argument("--planner-on", choices=("leader", "follower", "followers"),
                        default=None,
                        help="Raft: the voter process the planner runs in (followers: "
                             "one planner in each follower, each placing half)")
    parser.add_argument("--gc", choices=("default", "freeze"), default="default",
                        help="Raft: the voters' garbage collector: Python's default, or "
                             "gc.freeze() every second (see scheduler/README.md)")
    parser.add_argument("--what-if", action="append", default=[], metavar="SETTING=VALUE",
                        help="Raft: override a pysyncobj setting of raft_conf in the "
                             "simulator's voters (an experiment, not the daemon's settings)")
    parser.add_argument("--snapshot", action="store_true",
                        help="Raft: time pickling and unpickling the final State")
    args = parser.parse_args(argv)
    if args.raft is None:
        report = run_pure(args.members, args.instances, args.seed)
    else:
        options = RaftOptions(planners=args.planners, window=args.window or DEFAULT_WINDOW,
                              plan_size=args.plan_size or DEFAULT_PLAN_SIZE,
                              planner_on=args.planner_on or PLANNER_ON, gc_mode=args.gc,
                              what_if=dict(parse_setting(text) for text in args.what_if))
        report = run_raft(args.members, args.instances, args.seed, options,
                          snapshot=args.snapshot)
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
