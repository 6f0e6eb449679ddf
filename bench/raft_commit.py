"""Commits/s of the replicated store alone: 1 and 3 RaftStore voters on loopback.

    python bench/raft_commit.py [--commits 4000] [--dir DIR]

Sequential (one ``submit`` at a time, what a lone client sees) and pipelined (many
``submit``s at once, batched into shared log entries). The journals live under
``--dir`` (default: a temporary directory), which must be on the disk being measured:
an fsync on tmpfs costs nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.state.commands import command  # noqa: E402
from cluster.state.raft import RaftStore  # noqa: E402


def _addresses(count: int) -> list[str]:
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    found = [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    for sock in socks:
        sock.close()
    return found


async def throughput(voters: int, commits: int, parent: Path | None) -> tuple[float, float]:
    """(sequential, pipelined) commits/s of ``voters`` voters."""
    addresses = _addresses(voters)
    root = Path(tempfile.mkdtemp(prefix="corral-bench-raft-", dir=parent))
    stores = [RaftStore(a, [b for b in addresses if b != a], root / str(i), "bench")
              for i, a in enumerate(addresses)]
    try:
        await asyncio.gather(*(s.start() for s in stores))
        while not any(s.leader() == s.address for s in stores):
            await asyncio.sleep(0.05)
        leader = next(s for s in stores if s.leader() == s.address)
        await leader.submit(command("cluster.bootstrap", member={"name": "m1"},
                                    pool={"name": "default", "driver": "dir"},
                                    network={"name": "br0"}))
        sequential_count = commits // 4
        started = time.perf_counter()
        for _ in range(sequential_count):
            await leader.submit(command("member.heartbeat", name="m1"))
        sequential = sequential_count / (time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*(leader.submit(command("member.heartbeat", name="m1"))
                               for _ in range(commits)))
        pipelined = commits / (time.perf_counter() - started)
        return sequential, pipelined
    finally:
        await asyncio.gather(*(s.close() for s in stores))
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=4000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    for voters in (1, 3):
        sequential, pipelined = asyncio.run(throughput(voters, args.commits, args.dir))
        print(f"{voters} voter(s): {sequential:,.0f} sequential commits/s, "
              f"{pipelined:,.0f} pipelined commits/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
