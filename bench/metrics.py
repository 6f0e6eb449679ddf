"""``/1.0/metrics`` scrape figures: corral and, side by side, real LXD.

    python bench/metrics.py [--running 50] [--scrapes 200] [--cpu-window 60]
                            [--cluster] [--anchor-socket PATH]

Starts its own corral daemon (own CORRAL_DIR, bridge and subnet) and reports, over the
unix socket, the median and p90 latency of a scrape with 3 running containers and with
``--running`` of them (served from the scrape cache, as a Prometheus scraping every
15 s mostly is; the cache's own collection time is read from
``corral_metrics_collection_seconds``), and the daemon's CPU cost of a scrape every 15 s
(its CPU time over ``--cpu-window`` seconds with and without scrapes). ``--cluster``
adds the latency of ``scope=cluster`` on a 3-member namespace cluster. With
``--anchor-socket`` (``../shared/anchors/lxd/start_lxd.sh``) LXD's scrape latency with
3 running containers is measured in the same run and the ratio printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lifecycle import Conn  # noqa: E402
from devtools import devcluster  # noqa: E402
from devtools.harness import DaemonProcess  # noqa: E402
from node_agent.network.bridge import host_ipv4_networks, pick_subnet  # noqa: E402

TARGET_MS = 20.0  # a cached scrape of one member with 50 running containers
SCRAPE_INTERVAL = 15.0


def call(sock: str, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    conn = Conn(sock)
    try:
        data = json.dumps(body) if body is not None else None
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def ok(sock: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
    status, raw = call(sock, method, path, body)
    doc: dict[str, Any] = json.loads(raw or b"{}")
    if status >= 400 or doc.get("type") == "error":
        raise RuntimeError(f"{method} {path}: {status} {doc.get('error')}")
    if doc.get("type") == "async":
        status, raw = call(sock, "GET", f"{doc['operation']}/wait?timeout=300")
        op = json.loads(raw)["metadata"]
        if op["status"] != "Success":
            raise RuntimeError(f"{method} {path}: {op['err']}")
    return doc


def scrape_ms(sock: str, count: int, query: str = "") -> list[float]:
    """Latencies of ``count`` scrapes on one kept-alive connection, as Prometheus scrapes."""
    conn = Conn(sock)
    out = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request("GET", f"/1.0/metrics{query}")
            resp = conn.getresponse()
            body = resp.read()
            out.append((time.perf_counter() - started) * 1000)
            if resp.status != 200 or not body:
                raise RuntimeError(f"scrape: {resp.status}")
    finally:
        conn.close()
    return out


def metric(sock: str, name: str) -> float:
    text = call(sock, "GET", "/1.0/metrics")[1].decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise RuntimeError(f"{name} not in the scrape")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(sock: str, pid: int, window: float, scrape: bool) -> float:
    """The daemon's CPU time over ``window`` s as a share of one core, scraping every
    ``SCRAPE_INTERVAL`` s if ``scrape``."""
    before, started = cpu_seconds(pid), time.monotonic()
    next_scrape = started
    while (now := time.monotonic()) < started + window:
        if scrape and now >= next_scrape:
            scrape_ms(sock, 1)
            next_scrape += SCRAPE_INTERVAL
        time.sleep(0.2)
    return (cpu_seconds(pid) - before) / (time.monotonic() - started)


def launch(sock: str, names: list[str], image: str = "busybox", kind: str = "") -> None:
    body: dict[str, Any] = {"source": {"type": "image", "alias": image}, "start": True}
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: ok(sock, "POST", f"/1.0/instances{kind}",
                                   {**body, "name": n}), names))


def remove(sock: str, names: list[str], kind: str = "") -> None:
    for name in names:
        call(sock, "PUT", f"/1.0/instances{kind}/{name}/state",
             {"action": "stop", "force": True})
        for _ in range(100):
            status, raw = call(sock, "DELETE", f"/1.0/instances{kind}/{name}")
            doc = json.loads(raw or b"{}")
            if doc.get("type") == "async":
                call(sock, "GET", f"{doc['operation']}/wait?timeout=120")
            if status < 400 or status == 404:
                break
            time.sleep(0.2)


def stats(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9) - 1]
    return f"median {statistics.median(ordered):7.2f} ms  p90 {p90:7.2f} ms"


def member_figures(args: argparse.Namespace) -> dict[str, float]:
    tag = secrets.token_hex(2)
    root = Path("/tmp") / f"corral-bench-{tag}"
    address = pick_subnet(host_ipv4_networks(), random.Random(), within="10.239.0.0/16")
    daemon = DaemonProcess(root=root, bridge=f"cmb{tag}", address=address)
    figures: dict[str, float] = {}
    try:
        daemon.start()
        daemon.init()
        daemon.corral("image", "build", "busybox", timeout=300)
        sock = str(daemon.socket)
        pid = int(ok(sock, "GET", "/1.0")["metadata"]["environment"]["server_pid"])
        names = [f"mb{i}" for i in range(args.running)]
        launch(sock, names[:3])
        scrape_ms(sock, 5)
        time.sleep(6)  # a collection with all three running
        three = scrape_ms(sock, args.scrapes)
        print(f"corral, 3 running:       {stats(three)}")
        figures["3"] = statistics.median(three)
        launch(sock, names[3:])
        scrape_ms(sock, 5)
        time.sleep(6)
        many = scrape_ms(sock, args.scrapes)
        figures["many"] = statistics.median(many)
        collect = metric(sock, "corral_metrics_collection_seconds") * 1000
        print(f"corral, {args.running} running:      {stats(many)}  (target <= {TARGET_MS:g} ms)"
              f"; a collection takes {collect:.1f} ms")
        idle = cpu_share(sock, pid, args.cpu_window, scrape=False)
        busy = cpu_share(sock, pid, args.cpu_window, scrape=True)
        print(f"daemon CPU, {args.running} running: idle {idle * 100:.2f}% of a core, "
              f"scraped every {SCRAPE_INTERVAL:g} s {busy * 100:.2f}% "
              f"(scrapes cost {max(0.0, busy - idle) * 100:.2f}%)")
        remove(sock, names)
    finally:
        daemon.destroy()
        shutil.rmtree(root, ignore_errors=True)
    return figures


def cluster_figures(args: argparse.Namespace) -> None:
    directory = Path("/tmp") / f"corral-bench-cluster-{secrets.token_hex(3)}"
    try:
        members = devcluster.up(3, directory)
        members[0].corral("image", "build", "busybox", timeout=300)
        for index, member in enumerate(members, 1):
            members[0].corral("launch", "busybox", f"cb{index}", "--target",
                              member.root.name, timeout=180)
        sock = str(members[0].socket)
        scrape_ms(sock, 5, "?scope=cluster")
        took = scrape_ms(sock, min(args.scrapes, 100), "?scope=cluster")
        print(f"scope=cluster, 3 members: {stats(took)}")
    finally:
        devcluster.down(directory)
        shutil.rmtree(directory, ignore_errors=True)


def anchor_figure(sock: str, scrapes: int) -> float:
    names = [f"lxdmb{i}" for i in range(3)]
    launch(sock, names, kind="")
    try:
        scrape_ms(sock, 5)
        time.sleep(9)  # past LXD's 8 s cache, then measured as corral is
        took = scrape_ms(sock, scrapes)
        print(f"LXD, 3 running:          {stats(took)}")
        return statistics.median(took)
    finally:
        remove(sock, names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--running", type=int, default=50)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--cpu-window", type=float, default=60.0)
    parser.add_argument("--cluster", action="store_true")
    parser.add_argument("--anchor-socket", help="real LXD's unix socket")
    args = parser.parse_args()
    print("# bench/metrics.py: scrape latency over the unix socket")
    figures = member_figures(args)
    if args.cluster:
        cluster_figures(args)
    if args.anchor_socket:
        lxd = anchor_figure(args.anchor_socket, args.scrapes)
        print(f"corral/LXD, 3 running:   {figures['3'] / lxd:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
