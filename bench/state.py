"""The replicated state's figures (issue 13's benchmark), printed, never asserted.

    python bench/state.py [--parts commit,failover,steady,etcd] [--dir DIR]
                          [--trials 10] [--seconds 60] [--instances 1000]

- ``commit``: durable (fdatasynced) commands/s of 1 and 3 ``RaftStore`` voters on
  loopback in this process: sequential (one client, one command at a time) and
  pipelined (``--clients`` clients at once, each waiting for its own command), with the
  commit latency p50/p99 of each. Goals with 3 voters: >= 300 sequential, >= 5,000
  pipelined. The journals live under ``--dir``, which must be on the disk measured.
- ``failover``: leader kill -9 to the first accepted write, ``--trials`` times on a real
  3-member dev cluster in network namespaces (the killed member restarts between
  trials). Goal: median <= 1.5 s.
- ``steady``: Raft elections and leader changes during ``--seconds`` with both cores
  busy (CPU hogs started and killed by PID) and ``GET /1.0/instances?recursion=1`` of
  ``--instances`` real stopped containers looping on the leader. Goal: 0.
- ``etcd``: sequential puts/s of a local etcd from Python, if ``etcd`` is installed
  (apt ``etcd-server``); else the reference figure measured here before.

Everything started (dev cluster, daemons, namespaces, hogs, etcd, directories) is
removed at the end, also after a failure or ^C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.state.commands import command  # noqa: E402
from cluster.state.raft import RaftStore  # noqa: E402

PARTS = ("commit", "failover", "steady", "etcd")
ETCD_REFERENCE = "470-720 sequential puts/s from Python (measured here before)"


def addresses(count: int) -> list[str]:
    """``count`` free loopback addresses."""
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    found = [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    for sock in socks:
        sock.close()
    return found


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def timed_submit(store: RaftStore, latencies: list[float]) -> None:
    started = time.perf_counter()
    await store.submit(command("member.heartbeat", name="m1"))
    latencies.append(time.perf_counter() - started)


async def commit_rates(voters: int, sequential: int, clients: int, per_client: int,
                       parent: Path | None) -> dict[str, tuple[float, list[float]]]:
    """{"sequential"|"pipelined": (commands/s, latencies)} of ``voters`` voters."""
    found = addresses(voters)
    root = Path(tempfile.mkdtemp(prefix="corral-bench-state-", dir=parent))
    stores = [RaftStore(a, [b for b in found if b != a], root / str(i), "bench")
              for i, a in enumerate(found)]
    try:
        await asyncio.gather(*(s.start() for s in stores))
        while not any(s.leader() == s.address for s in stores):
            await asyncio.sleep(0.05)
        leader = next(s for s in stores if s.leader() == s.address)
        await leader.submit(command("cluster.bootstrap", member={"name": "m1"},
                                    pool={"name": "default", "driver": "dir"},
                                    network={"name": "br0"}))
        figures: dict[str, tuple[float, list[float]]] = {}
        latencies: list[float] = []
        started = time.perf_counter()
        for _ in range(sequential):
            await timed_submit(leader, latencies)
        figures["sequential"] = (sequential / (time.perf_counter() - started), latencies)

        async def client(out: list[float]) -> None:
            for _ in range(per_client):
                await timed_submit(leader, out)

        latencies = []
        started = time.perf_counter()
        await asyncio.gather(*(client(latencies) for _ in range(clients)))
        figures["pipelined"] = (clients * per_client / (time.perf_counter() - started),
                                latencies)
        return figures
    finally:
        await asyncio.gather(*(s.close() for s in stores))
        shutil.rmtree(root, ignore_errors=True)


def commit_part(args: argparse.Namespace) -> None:
    print(f"## commit: RaftStore voters on loopback, one process, journals in "
          f"{args.dir or tempfile.gettempdir()} (fdatasync before an acknowledgement)")
    for voters in (1, 3):
        figures = asyncio.run(commit_rates(voters, args.sequential, args.clients,
                                           args.per_client, args.dir))
        for mode, (rate, lat) in figures.items():
            goal = {"sequential": ">= 300", "pipelined": ">= 5,000"}[mode] if voters == 3 else ""
            verdict = "" if not goal else (
                "  met" if rate >= float(goal[3:].replace(",", "")) else "  NOT MET")
            clients = 1 if mode == "sequential" else args.clients
            print(f"{voters} voter(s) {mode:10s} ({clients:3d} clients): {rate:8,.0f} commands/s"
                  f"  p50 {percentile(lat, 0.5) * 1000:6.1f} ms  p99 "
                  f"{percentile(lat, 0.99) * 1000:6.1f} ms"
                  + (f"   goal {goal}{verdict}" if goal else ""))


def etcd_part(puts: int) -> None:
    """Sequential puts/s of a throwaway local etcd through its JSON gateway."""
    binary = shutil.which("etcd")
    if binary is None:
        print(f"## etcd: not installed (apt etcd-server); reference: {ETCD_REFERENCE}")
        return
    client, peer = addresses(2)
    data = Path(tempfile.mkdtemp(prefix="corral-bench-etcd-"))
    proc = subprocess.Popen(
        [binary, "--data-dir", str(data), "--listen-client-urls", f"http://{client}",
         "--advertise-client-urls", f"http://{client}", "--listen-peer-urls",
         f"http://{peer}", "--initial-advertise-peer-urls", f"http://{peer}",
         "--initial-cluster", f"default=http://{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://{client}/v3/kv/put"
        deadline = time.monotonic() + 30
        while True:
            try:
                _put(url, 0)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    print("## etcd: did not start; reference: " + ETCD_REFERENCE)
                    return
                time.sleep(0.1)
        latencies = []
        started = time.perf_counter()
        for n in range(puts):
            begun = time.perf_counter()
            _put(url, n)
            latencies.append(time.perf_counter() - begun)
        rate = puts / (time.perf_counter() - started)
        print(f"## etcd ({binary}, one member, same disk): {rate:,.0f} sequential puts/s "
              f"from Python, p50 {percentile(latencies, 0.5) * 1000:.1f} ms  p99 "
              f"{percentile(latencies, 0.99) * 1000:.1f} ms (reference: {ETCD_REFERENCE})")
    finally:
        proc.kill()  # by its PID: the one etcd this bench started
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def _put(url: str, n: int) -> None:
    body = json.dumps({"key": "YmVuY2g=", "value": f"{n:08d}".encode().hex()}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        resp.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--dir", type=Path, default=None, help="where the journals live")
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-client", type=int, default=100)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--puts", type=int, default=1000)
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    started = time.monotonic()
    if "commit" in parts:
        commit_part(args)
    if "failover" in parts or "steady" in parts:
        from bench.state_cluster import cluster_parts

        cluster_parts(args, failover_part="failover" in parts,
                      steady_part="steady" in parts)
    if "etcd" in parts:
        etcd_part(args.puts)
    print(f"# bench/state.py: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
