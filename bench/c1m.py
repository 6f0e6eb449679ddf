"""Scheduler scale figures: pure placement at 10,000 members, and C1M through Raft.

    python bench/c1m.py [--instances 1000000] [--pure-instances 200000] [--gc default]
                        [--planner-on followers] [--what-if SETTING=VALUE ...]
                        [--no-snapshot] [--seed 0]

1. Pure placement: 10,000 simulated members, ``--pure-instances`` instances placed by the
   ``IndexedScheduler`` in one process (goal: >= 10,000 decisions/s).
2. C1M (Nomad's "1 million containers on 5,000 hosts in under 5 minutes"): 5,000 members,
   ``--instances`` (1,000,000 by default) committed through a 3-voter pysyncobj cluster on
   loopback as plans of placements (``instance.create_many``, each placement re-validated
   by apply), planned in both followers' processes by default (as two members taking API
   requests; ``--planner-on follower`` plans in one); then the RSS of each replica and,
   unless ``--no-snapshot``, the time to pickle and unpickle the final State.

Both runs are ``simulator.simulate``'s (its FakeDriver, its output). Takes about as long as
the C1M run; scale it down with ``--instances``. The last line is the C1M placements/s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.sim_raft import GC_MODES, RaftOptions, run_raft  # noqa: E402
from simulator.simulate import parse_setting, print_report, run_pure  # noqa: E402

PURE_MEMBERS = 10_000
C1M_MEMBERS = 5_000
PURE_GOAL = 10_000  # decisions/s
C1M_GOAL = 300.0  # seconds for 1,000,000 instances


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1_000_000,
                        help="instances of the C1M run (scale it down for a quick look)")
    parser.add_argument("--pure-instances", type=int, default=200_000)
    parser.add_argument("--gc", choices=GC_MODES, default="default")
    parser.add_argument("--what-if", action="append", default=[], metavar="SETTING=VALUE",
                        help="override a pysyncobj setting in the simulator's voters only "
                             "(see python -m simulator.simulate --help)")
    parser.add_argument("--planner-on", choices=("leader", "follower", "followers"),
                        default="followers")
    parser.add_argument("--no-snapshot", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pure = run_pure(PURE_MEMBERS, args.pure_instances, args.seed)
    print_report(pure)
    print()
    options = RaftOptions(gc_mode=args.gc, planner_on=args.planner_on,
                          what_if=dict(parse_setting(t) for t in args.what_if))
    c1m = run_raft(C1M_MEMBERS, args.instances, args.seed, options,
                   snapshot=not args.no_snapshot)
    print_report(c1m)
    print()
    scaled = c1m.seconds * 1_000_000 / max(1, args.instances)
    print("# summary")
    print(f"{'pure decisions/s at 10,000 members':44s} {pure.placements_per_second:10,.0f}"
          f"   goal >= {PURE_GOAL:,}")
    print(f"{'C1M placing time (5,000 members)':44s} {c1m.seconds:10.1f} s for "
          f"{c1m.tally.placed:,} placed   goal <= {C1M_GOAL:.0f} s for 1,000,000"
          + ("" if args.instances == 1_000_000 else f" (x{1_000_000 / args.instances:g}: "
             f"{scaled:.0f} s if the rate held)"))
    print(f"{'C1M whole run (processes, setup, settle)':44s} {c1m.total_seconds:10.1f} s")
    for name, rss in c1m.rss.items():
        print(f"RSS {name:40s} {rss / 2**30:10.2f} GiB")
    for key, value in c1m.snapshot.items():
        shown = f"{value / 2**20:10.0f} MiB" if key.endswith("bytes") else f"{value:10.2f} s"
        print(f"{'snapshot: ' + key:44s} {shown}")
    print(f"placements/s: {c1m.placements_per_second:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
