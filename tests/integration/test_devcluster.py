"""The shared multi-host harness: ``dev-cluster`` members, each a namespace host."""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import devcluster
from devtools.harness import DaemonProcess
from devtools.netns import (
    HostNetwork,
    enter_argv,
    host_routes,
    links,
    namespaces,
    pick_subnet,
    pids_in,
    teardown_prefix,
)
from tests.integration.conftest import real_prerequisites

pytestmark = pytest.mark.real

LISTENER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
print("listening", flush=True)
conn, peer = srv.accept()
conn.sendall(b"from " + peer[0].encode() + b" got " + conn.recv(64))
conn.close()
"""

CONNECT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as conn:
    conn.sendall(sys.argv[3].encode())
    print(conn.recv(200).decode())
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Path, list[DaemonProcess], dict]]:
    problem = real_prerequisites() or ("" if shutil.which("nsenter") else "needs nsenter")
    if problem:
        pytest.skip(problem)
    directory = Path("/tmp") / f"corral-devcluster-{secrets.token_hex(3)}"
    try:
        started = time.monotonic()
        members = devcluster.up(3, directory)
        print(f"up(3) took {time.monotonic() - started:.1f}s")
        yield directory, members, json.loads((directory / "devcluster.json").read_text())
    finally:
        devcluster.down(directory)


def _netns_inode(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def test_three_members_each_in_their_own_namespace(cluster) -> None:
    _, members, state = cluster
    assert [m["name"] for m in state["members"]] == ["m1", "m2", "m3"]
    inodes = set()
    for member, described in zip(members, state["members"], strict=True):
        assert member.process is not None and member.process.pid == described["pid"]
        inodes.add(_netns_inode(described["pid"]))
        inside = subprocess.run(enter_argv(described["netns"], ["ip", "-4", "addr"]),
                                capture_output=True, text=True, timeout=10, check=True).stdout
        assert f"inet {described['address']}" in inside
        assert member.corral("list", "--format", "json").stdout.strip() == b"[]"
    assert len(inodes) == 3 and _netns_inode(os.getpid()) not in inodes


def test_container_on_m2_runs_and_execs(cluster) -> None:
    _, members, state = cluster
    m2 = members[1]
    m2.corral("image", "build", "busybox", timeout=300)
    m2.corral("launch", "busybox", "w1")
    assert m2.corral("exec", "w1", "--", "echo", "hello").stdout == b"hello\n"
    listing = json.loads(m2.corral("list", "--format", "json").stdout)
    assert [i["name"] for i in listing] == ["w1"] and listing[0]["status"] == "Running"
    # The container's bridge lives in m2's namespace, not in the root one.
    assert state["members"][1]["container_bridge"] not in {link["ifname"] for link in links()}


def test_hosts_reach_each_other_over_the_bridge(cluster) -> None:
    _, _, state = cluster
    m1, m3 = state["members"][0], state["members"][2]
    ip1 = m1["address"].split("/")[0]
    listener = subprocess.Popen(enter_argv(m1["netns"], [sys.executable, "-c", LISTENER,
                                                         ip1, "7707"]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline() == b"listening\n"
        token = secrets.token_hex(8)
        reply = subprocess.run(enter_argv(m3["netns"], [sys.executable, "-c", CONNECT,
                                                        ip1, "7707", token]),
                               capture_output=True, text=True, timeout=20, check=True).stdout
        # The token comes back from our listener, which saw m3's address: not a proxy.
        assert reply.strip() == f"from {m3['address'].split('/')[0]} got {token}"
    finally:
        listener.kill()
        listener.wait(10)


def test_down_leaves_nothing_behind(cluster) -> None:
    directory, _, state = cluster
    prefix = state["prefix"]
    pids = [p for m in state["members"] for p in pids_in(m["netns"])]
    assert pids  # daemons, dnsmasqs and the [lxc monitor] of w1
    started = time.monotonic()
    devcluster.down(directory)
    print(f"down took {time.monotonic() - started:.1f}s")
    assert not [ns for ns in namespaces() if ns.startswith(prefix)]
    assert not [link["ifname"] for link in links() if link["ifname"].startswith(prefix)]
    assert not [(p, _stat(p)) for p in pids if _stat(p) not in ("", "Z")]
    assert not [p for p in os.listdir("/proc") if p.isdigit()
                and str(directory).encode() in _cmdline(int(p))]
    for m in state["members"]:
        cgroup = devcluster_cgroup(Path(m["corral_dir"]))
        assert not list(Path("/sys/fs/cgroup").glob(f"*/{cgroup}"))
    assert not directory.exists()
    assert devcluster.down(directory) == []  # idempotent


def devcluster_cgroup(root: Path) -> str:
    import hashlib

    return "corral-" + hashlib.sha256(str(root).encode()).hexdigest()[:8]


def _stat(pid: int) -> str:
    """The process state letter ("Z": a zombie our Popen has not reaped), "" if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_teardown_by_prefix_cleans_up_after_a_crash() -> None:
    if real_prerequisites():
        pytest.skip(real_prerequisites())
    prefix = f"ct{secrets.token_hex(3)}"
    net = HostNetwork(prefix, pick_subnet(host_routes(), random.Random()))
    try:
        net.create()
        host = net.add_host("h1")
        sleeper = host.popen(["sleep", "300"])
        assert host.run(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout.split()[3].decode() == \
            host.address
        del net  # "crash": nothing but the prefix is left to go by
        removed = teardown_prefix(prefix)
        assert f"netns {prefix}-h1" in removed and f"bridge {prefix}br" in removed
        assert sleeper.wait(10) != 0
        assert not [ns for ns in namespaces() if ns.startswith(prefix)]
        assert not [link["ifname"] for link in links() if link["ifname"].startswith(prefix)]
    finally:
        teardown_prefix(prefix)
