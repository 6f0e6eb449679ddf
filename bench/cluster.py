"""Cluster figures on a 3-member namespace cluster (``corral dev-cluster``'s harness).

    python bench/cluster.py [--commits 2000]

Reports: the time a member takes to join; synchronous and pipelined commits/s of the
replicated store (three pysyncobj voters on loopback in this process, the API's
``RaftStore``) and, through the API of a real member, synchronous and concurrent
config writes/s; the time from kill -9 of the leader to the next accepted write; and
the time until the killed member shows OFFLINE in ``cluster list``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.state.commands import command  # noqa: E402
from cluster.state.raft import RaftStore  # noqa: E402
from corral_shared.liveness import DEFAULT_OFFLINE_THRESHOLD  # noqa: E402
from devtools import devcluster  # noqa: E402
from devtools.harness import DaemonProcess  # noqa: E402


def _ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for sock in socks:
        sock.close()
    return ports


async def store_throughput(commits: int) -> tuple[float, float]:
    """Commits/s of a 3-voter RaftStore cluster on loopback: one at a time, pipelined."""
    addresses = [f"127.0.0.1:{p}" for p in _ports(3)]
    root = Path(tempfile.mkdtemp(prefix="corral-bench-raft-"))
    stores = [RaftStore(a, [b for b in addresses if b != a], root / str(i), "bench")
              for i, a in enumerate(addresses)]
    try:
        await asyncio.gather(*(s.start() for s in stores))
        leader = next(s for s in stores if s.leader() == s.address)
        await leader.submit(command("cluster.bootstrap", member={"name": "m1"},
                                    pool={"name": "default", "driver": "dir"},
                                    network={"name": "br0"}))
        started = time.perf_counter()
        for _ in range(commits // 4):
            await leader.submit(command("member.heartbeat", name="m1"))
        sync_rate = (commits // 4) / (time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*(leader.submit(command("member.heartbeat", name="m1"))
                               for _ in range(commits)))
        pipelined = commits / (time.perf_counter() - started)
        return sync_rate, pipelined
    finally:
        await asyncio.gather(*(s.close() for s in stores))
        shutil.rmtree(root, ignore_errors=True)


def api_writes(daemon: DaemonProcess, count: int) -> tuple[float, float]:
    """Config writes/s through a member's API: sequential, then 32 concurrent clients."""
    import aiohttp

    async def run() -> tuple[float, float]:
        connector = aiohttp.UnixConnector(path=str(daemon.socket), limit=32)
        async with aiohttp.ClientSession(connector=connector) as http:
            async def write(i: int) -> None:
                async with http.patch("http://c/1.0", json={"config": {"user.bench": str(i)}}
                                      ) as resp:
                    assert resp.status == 200, await resp.text()

            started = time.perf_counter()
            for i in range(count // 4):
                await write(i)
            sequential = (count // 4) / (time.perf_counter() - started)
            started = time.perf_counter()
            sem = asyncio.Semaphore(32)

            async def bounded(i: int) -> None:
                async with sem:
                    await write(i)

            await asyncio.gather(*(bounded(i) for i in range(count)))
            return sequential, count / (time.perf_counter() - started)

    return asyncio.run(run())


def _members(daemon: DaemonProcess) -> list[dict]:
    result = daemon.corral("cluster", "list", "--format", "json", check=False, timeout=10)
    return json.loads(result.stdout) if result.returncode == 0 else []


def failover(members: list[DaemonProcess]) -> tuple[float, float]:
    """Seconds from kill -9 of the leader to the next accepted write, and until the
    killed member shows OFFLINE."""
    leader = next(int(m["server_name"][1:]) - 1 for m in _members(members[0])
                  if "database-leader" in m["roles"])
    other = members[(leader + 1) % len(members)]
    members[leader].stop(signal.SIGKILL)
    killed = time.monotonic()
    write_after = None
    while write_after is None:
        result = other.corral("config", "set", "user.failover", secrets.token_hex(2),
                              check=False, timeout=10)
        if result.returncode == 0:
            write_after = time.monotonic() - killed
    while True:
        if any(m["server_name"] == f"m{leader + 1}" and m["status"] == "Offline"
               for m in _members(other)):
            return write_after, time.monotonic() - killed
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=4000)
    args = parser.parse_args()
    sync_rate, pipelined = asyncio.run(store_throughput(args.commits))
    directory = Path("/tmp") / f"corral-bench-cluster-{secrets.token_hex(3)}"
    joins: list[float] = []
    try:
        started = time.monotonic()
        members = devcluster.up(3, directory, join_seconds=joins)
        up_seconds = time.monotonic() - started
        api_seq, api_conc = api_writes(members[0], 400)
        write_after, offline_after = failover(members)
    finally:
        devcluster.down(directory)
        shutil.rmtree(directory, ignore_errors=True)
    print("# bench/cluster.py: 3 members in network namespaces (dev-cluster harness)")
    print(f"{'dev-cluster up (3 members, formed)':44s} {up_seconds:8.2f} s")
    print(f"{'member join (corral init --join), median':44s} {statistics.median(joins):8.2f} s")
    print(f"{'store commits/s, synchronous (3 voters)':44s} {sync_rate:8.0f}")
    print(f"{'store commits/s, pipelined (3 voters)':44s} {pipelined:8.0f}   goal >= 5000")
    print(f"{'API config writes/s, sequential':44s} {api_seq:8.0f}")
    print(f"{'API config writes/s, 32 concurrent':44s} {api_conc:8.0f}")
    print(f"{'leader kill -9 -> next accepted write':44s} {write_after:8.2f} s   goal <= 1.5 s")
    print(f"{'leader kill -9 -> shown OFFLINE':44s} {offline_after:8.2f} s   "
          f"(threshold {DEFAULT_OFFLINE_THRESHOLD:g} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
