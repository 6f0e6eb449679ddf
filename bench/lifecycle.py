"""Instance lifecycle through the REST API: corral and, side by side, real LXD.

    python bench/lifecycle.py [--reps 10] [--running 50] [--anchor-socket PATH]

Starts its own corral daemon (own CORRAL_DIR, bridge and subnet) unless --socket is given.
Prints medians in ms for create, start, launch (create+start), state, list with recursion
1 and 2 (with --running instances running), a clean stop, stop --force and delete; the
per-container memory (PSS of each container's monitor process) and the daemon's idle RSS;
and, with --anchor-socket (start LXD with ../shared/anchors/lxd/start_lxd.sh), LXD's
figures from the same run and the corral/LXD ratios.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import secrets
import socket
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.harness import DaemonProcess  # noqa: E402
from node_agent.network.bridge import host_ipv4_networks, pick_subnet  # noqa: E402


class Conn(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("bench", timeout=300)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class Server:
    def __init__(self, label: str, socket_path: str) -> None:
        self.label = label
        self.conn = Conn(socket_path)
        self.samples: dict[str, list[float]] = {}

    def req(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = json.dumps(body) if body is not None else None
        self.conn.request(method, path, body=data,
                          headers={"Content-Type": "application/json"} if data else {})
        resp = self.conn.getresponse()
        doc: dict[str, Any] = json.loads(resp.read() or b"{}")
        if doc.get("type") == "error":
            raise RuntimeError(f"{self.label} {method} {path}: {doc.get('error')}")
        return doc

    def op(self, method: str, path: str, body: Any = None) -> None:
        doc = self.req(method, path, body)
        if doc.get("type") == "async":
            done = self.req("GET", doc["operation"] + "/wait?timeout=120")
            if done["metadata"]["status"] != "Success":
                raise RuntimeError(f"{self.label} {method} {path}: {done['metadata']['err']}")

    def timed(self, key: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        self.samples.setdefault(key, []).append((time.perf_counter() - start) * 1000)
        return result


def monitor_pss_kb(lxcpath_fragment: str, names: set[str]) -> list[int]:
    """PSS of the ``[lxc monitor]`` process of each named container."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            if not cmd.startswith("[lxc monitor]") or lxcpath_fragment not in cmd:
                continue
            if cmd.rsplit(" ", 1)[-1] not in names:
                continue
            for line in (proc / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    out.append(int(line.split()[1]))
        except OSError:
            continue
    return out


def run(server: Server, image: str, reps: int, running: int, prefix: str,
        lxcpath: str) -> dict[str, float]:
    names = [f"{prefix}{i}" for i in range(running)]
    for i, name in enumerate(names):
        src = {"type": "image", "alias": image}
        if i < reps:
            server.timed("create", partial(server.op, "POST", "/1.0/instances",
                                           {"name": name, "source": src}))
            server.timed("start", partial(server.op, "PUT", f"/1.0/instances/{name}/state",
                                          {"action": "start", "timeout": 30}))
            server.timed("state", partial(server.req, "GET", f"/1.0/instances/{name}/state"))
        else:
            server.op("POST", "/1.0/instances", {"name": name, "source": src, "start": True}
                      if server.label == "corral" else {"name": name, "source": src})
            if server.label != "corral":
                server.op("PUT", f"/1.0/instances/{name}/state", {"action": "start"})
    for _ in range(reps):
        server.timed("list recursion=1", lambda: server.req("GET", "/1.0/instances?recursion=1"))
        server.timed("list recursion=2", lambda: server.req("GET", "/1.0/instances?recursion=2"))
    pss = monitor_pss_kb(lxcpath, set(names))
    for name in names[:reps]:  # a clean stop (the halt signal), then running again
        server.timed("stop (clean)", partial(server.op, "PUT", f"/1.0/instances/{name}/state",
                                             {"action": "stop", "timeout": 30}))
        server.op("PUT", f"/1.0/instances/{name}/state", {"action": "start"})
    for i, name in enumerate(names):
        if i < reps:
            server.timed("stop --force", partial(server.op, "PUT", f"/1.0/instances/{name}/state",
                                                 {"action": "stop", "force": True}))
            server.timed("delete", partial(server.op, "DELETE", f"/1.0/instances/{name}"))
        else:
            server.op("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})
            server.op("DELETE", f"/1.0/instances/{name}")
    medians = {k: statistics.median(v) for k, v in server.samples.items()}
    medians["launch (create+start)"] = medians["create"] + medians["start"]
    medians["monitor PSS per container (KB)"] = statistics.median(pss) if pss else float("nan")
    return medians


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


TARGETS = {"launch (create+start)": 1 / 3, "stop --force": 1 / 10, "list recursion=2": 1 / 4}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--running", type=int, default=50)
    parser.add_argument("--socket", help="an already running corral daemon's socket")
    parser.add_argument("--anchor-socket", help="real LXD's unix socket, for side-by-side figures")
    parser.add_argument("--anchor-image", default="busybox")
    args = parser.parse_args()
    daemon = None
    if args.socket:
        socket_path = args.socket
    else:
        tag = secrets.token_hex(2)
        root = Path("/tmp") / f"corral-bench-{tag}"
        address = pick_subnet(host_ipv4_networks(), random.Random(), within="10.239.0.0/16")
        daemon = DaemonProcess(root=root, bridge=f"cbb{tag}", address=address)
        daemon.start()
        daemon.init()
        daemon.corral("image", "build", "busybox", timeout=300)
        socket_path = str(daemon.socket)
    try:
        corral = Server("corral", socket_path)
        time.sleep(2)
        pid = int(corral.req("GET", "/1.0")["metadata"]["environment"]["server_pid"])
        idle_rss = rss_kb(pid)
        ours = run(corral, "busybox", args.reps, args.running, "bench",
                   str(Path(socket_path).parent))
        theirs = None
        if args.anchor_socket:
            lxd = Server("lxd", args.anchor_socket)
            theirs = run(lxd, args.anchor_image, args.reps, args.running, "benchl", "/containers")
    finally:
        if daemon is not None:
            daemon.destroy()
    print(f"# bench/lifecycle.py: reps={args.reps}, {args.running} running for the lists; "
          "median ms")
    header = f"{'measure':34s} {'corral':>10s}"
    if theirs:
        header += f" {'LXD':>10s} {'ratio':>8s} {'target':>8s}"
    print(header)
    for key, value in ours.items():
        line = f"{key:34s} {value:10.1f}"
        if theirs and key in theirs:
            ratio = value / theirs[key] if theirs[key] else float("nan")
            target = f"<= {TARGETS[key]:.2f}" if key in TARGETS else ""
            line += f" {theirs[key]:10.1f} {ratio:8.2f} {target:>8s}"
        print(line)
    print(f"{'daemon idle RSS (KB)':34s} {idle_rss:10d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
