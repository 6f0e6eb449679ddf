"""Pure placement decisions per second, plain pipeline and index, at 1,000 and 10,000 members.

    python bench/placement.py [--decisions 20000] [--seed 42]

A decision is ``place`` then ``commit`` of its plan (what the leader does for each create
once the plan is accepted); requests are built beforehand. Members have varied capacities
(8-128 CPUs, 16-512 GiB memory, 200 GiB-4 TiB disk), architectures (10% aarch64), instance
types, cluster groups, a few manual-mode and offline members, and start 0-50% reserved.
Requests mix containers and virtual machines of varied sizes; 5% target a cluster group.
Also reports how close the index's choices are to the plain pipeline's at 10,000 members.
The last line is the indexed figure at 10,000 members under the default (spread) policy.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corral_shared.resources import GiB, MiB, Resources, TiB  # noqa: E402
from scheduler.pipeline import place  # noqa: E402
from scheduler.request import PlacementRequest  # noqa: E402
from scheduler.view import ClusterView, MemberView  # noqa: E402
from simulator.index import IndexedScheduler  # noqa: E402

RACKS = [f"rack{i}" for i in range(8)]


def make_view(members: int, rng: random.Random, policy: str = "spread") -> ClusterView:
    view = ClusterView(policy=policy)
    for i in range(members):
        capacity = Resources(
            cpu=rng.choice([8, 16, 24, 32, 48, 64, 96, 128]),
            memory=rng.choice([16, 32, 64, 128, 192, 256, 384, 512]) * GiB,
            disk=rng.choice([200 * GiB, 500 * GiB, 1 * TiB, 2 * TiB, 4 * TiB]))
        used = [rng.uniform(0, 0.5) for _ in range(3)]
        reserved = Resources(float(int(capacity.cpu * used[0])), int(capacity.memory * used[1]),
                             int(capacity.disk * used[2]))
        name = f"m{i:05d}"
        view.members[name] = MemberView(
            name=name,
            status="OFFLINE" if rng.random() < 0.01 else "ONLINE",
            architecture="aarch64" if rng.random() < 0.1 else "x86_64",
            instance_types=frozenset({"container", "virtual-machine"}) if rng.random() < 0.7
            else frozenset({"container"}),
            mode="manual" if rng.random() < 0.02 else "all",
            groups=frozenset({rng.choice(RACKS)}),
            capacity=capacity, reserved=reserved, instances=rng.randrange(0, 40))
    return view


def make_requests(count: int, rng: random.Random) -> list[PlacementRequest]:
    requests = []
    for i in range(count):
        if rng.random() < 0.7:
            kind = "container"
            demand = Resources(rng.choice([1, 1, 2, 2, 4]),
                               rng.choice([512 * MiB, 1 * GiB, 2 * GiB, 4 * GiB, 8 * GiB]),
                               rng.choice([1, 5, 10, 20]) * GiB)
        else:
            kind = "virtual-machine"
            demand = Resources(rng.choice([1, 2, 4, 8, 16]),
                               rng.choice([1, 2, 4, 8, 16, 32]) * GiB,
                               rng.choice([10, 20, 50, 100, 200]) * GiB)
        requests.append(PlacementRequest(
            id=f"req-{i}", name=f"i{i}", type=kind,
            architecture="aarch64" if rng.random() < 0.1 else "x86_64", demand=demand,
            target=f"@{rng.choice(RACKS)}" if rng.random() < 0.05 else ""))
    return requests


def run_plain(view: ClusterView, requests: list[PlacementRequest]) -> float:
    start = time.perf_counter()
    for request in requests:
        plan = place(view, request)
        if plan.member is not None:
            view.commit(plan.member, request.demand)
    return len(requests) / (time.perf_counter() - start)


def run_indexed(view: ClusterView, requests: list[PlacementRequest]) -> tuple[float, int]:
    scheduler = IndexedScheduler(view)
    failed = 0
    start = time.perf_counter()
    for request in requests:
        plan = scheduler.place(request)
        if plan.member is not None:
            scheduler.commit(plan.member, request.demand)
        else:
            failed += 1
    return len(requests) / (time.perf_counter() - start), failed


def quality(view: ClusterView, warmup: list[PlacementRequest],
            sample: list[PlacementRequest]) -> tuple[int, float, float]:
    """After ``warmup`` indexed placements (spread evens loads out, the hard case), how the
    index's choice for each of ``sample`` compares with the plain pipeline's best total:
    (decisions with the best total, mean gap, max gap)."""
    scheduler = IndexedScheduler(view)
    for request in warmup:
        plan = scheduler.place(request)
        if plan.member is not None:
            scheduler.commit(plan.member, request.demand)
    same, gaps = 0, []
    for request in sample:
        indexed, plain = scheduler.place(request), place(scheduler.view, request)
        if indexed.member is None or plain.member is None:
            continue
        best = plain.explanation.scored[0].total
        got = next(r.total for r in plain.explanation.scored if r.member == indexed.member)
        gaps.append(best - got)
        same += best == got
        scheduler.commit(indexed.member, request.demand)
    return same, sum(gaps) / max(1, len(gaps)), max(gaps, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20_000,
                        help="indexed decisions at 10,000 members (a tenth at 1,000)")
    parser.add_argument("--plain-decisions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(f"{'members':>8} {'path':>8} {'policy':>8} {'decisions':>10} {'placements/s':>13}")
    indexed_10k = 0.0
    for members in (1_000, 10_000):
        for policy in ("spread", "binpack"):
            plain_count = args.plain_decisions if members <= 1_000 else args.plain_decisions // 10
            rng = random.Random(args.seed)
            rate = run_plain(make_view(members, rng, policy), make_requests(plain_count, rng))
            print(f"{members:>8} {'plain':>8} {policy:>8} {plain_count:>10} {rate:>13,.0f}")
            rng = random.Random(args.seed)
            view = make_view(members, rng, policy)
            count = args.decisions * members // 10_000
            rate, failed = run_indexed(view, make_requests(count, rng))
            print(f"{members:>8} {'indexed':>8} {policy:>8} {count:>10} "
                  f"{rate:>13,.0f}" + (f"  ({failed} found no room)" if failed else ""))
            if members == 10_000 and policy == "spread":
                indexed_10k = rate
    for policy in ("spread", "binpack"):
        rng = random.Random(args.seed + 1)
        sample = 100
        view = make_view(10_000, rng, policy)
        same, mean, worst = quality(view, make_requests(args.decisions // 2, rng),
                                    make_requests(sample, rng))
        print(f"quality at 10000 members ({policy}, after {args.decisions // 2} placements): "
              f"the index chose a best-scoring member in {same}/{sample} decisions; score "
              f"gap to the best: mean {mean:.4f}, max {worst:.4f} (scores in [0, 1])")
    print(f"placements/s: {indexed_10k:.0f}")


if __name__ == "__main__":
    main()
