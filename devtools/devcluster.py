"""``corral dev-cluster``: N corral members, each in a namespace host, on one machine.

::

    up(3, DIR)
      HostNetwork(<prefix>, 10.77.x.0/24)       bridge <prefix>br in the root namespace
        m1: netns <prefix>-m1  eth0 10.77.x.2   corral daemon, CORRAL_DIR=DIR/m1, c1br0 10.78.1.1/24
        m2: netns <prefix>-m2  eth0 10.77.x.3   corral daemon, CORRAL_DIR=DIR/m2, c2br0 10.78.2.1/24
        ...
      form_cluster(members)                     the first bootstraps, the others join with tokens
                                                (with witness=True the last joins --witness)
      DIR/devcluster.json                       what down() removes (written before any daemon)

The same harness (``devtools.netns`` + ``DaemonProcess``) runs the multi-host tests, so what
a developer pokes at is what the tests exercise (DESIGN §7).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devtools.harness import DaemonProcess
from devtools.netns import (
    HostNetwork,
    enter_argv,
    host_routes,
    kill_pids,
    netns_path,
    pick_subnet,
    teardown_prefix,
)
from devtools.teardown import teardown

DEFAULT_DIR = Path("/var/lib/corral-dev")
STATE_FILE = "devcluster.json"
MAX_NODES = 32


class DevClusterError(RuntimeError):
    """The dev cluster cannot be brought up or down; the message says what to do."""


def dev_prefix(directory: Path) -> str:
    """Names of a dev cluster's bridge and namespaces derive from its directory, so two
    dev clusters in different directories never collide and ``down`` works without state."""
    return "cd" + hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:6]


def member_name(index: int) -> str:
    return f"m{index}"


def container_bridge(index: int) -> str:
    """The instance bridge inside member ``index``'s namespace (distinct per member)."""
    return f"c{index}br0"


def container_network(index: int) -> str:
    """The instance bridge's CIDR: distinct per member, so routes between members can
    come later without renumbering."""
    if not 1 <= index <= 254:
        raise DevClusterError(f"member index {index} out of range 1-254")
    return f"10.78.{index}.1/24"


API_PORT = 8443


def form_cluster(members: list[DaemonProcess], addresses: list[str],
                 join_seconds: list[float] | None = None, witness: bool = False,
                 storage_backend: str = "dir") -> None:
    """One cluster: the first member starts it on its host address, every other one
    joins it with a single-use token from ``corral cluster add`` (as a user would); with
    ``witness`` the last one joins as a witness (``init --join TOKEN --witness``). The
    default pool is ``storage_backend``'s (a btrfs pool on a 4 GiB sparse loop file per
    member), as every member's pool is the cluster's pool."""
    first = members[0]
    storage = (["--storage-backend", "btrfs", "--storage-create-loop", "4"]
               if storage_backend == "btrfs" else [])
    first.corral("init", "--auto", "--bridge-name", first.bridge, "--network-address",
                 first.address, "--address", f"{addresses[0]}:{API_PORT}",
                 "--member-name", member_name(1), *storage)
    for index, (member, address) in enumerate(zip(members[1:], addresses[1:],
                                                  strict=True), start=2):
        out = first.corral("cluster", "add", member_name(index)).stdout.decode()
        token = out.strip().splitlines()[-1]
        started = time.monotonic()
        as_witness = ["--witness"] if witness and index == len(members) else []
        member.corral("init", "--join", token, "--address", f"{address}:{API_PORT}",
                      *as_witness)
        if join_seconds is not None:
            join_seconds.append(time.monotonic() - started)


def up(nodes: int, directory: Path = DEFAULT_DIR,
       join_seconds: list[float] | None = None, witness: bool = False,
       storage_backend: str = "dir") -> list[DaemonProcess]:
    """Start ``nodes`` members under ``directory``; on any failure remove what was made.
    With ``witness`` the last member joins as a witness (it holds no instances).

    Raises DevClusterError if a dev cluster already lives in ``directory``.
    """
    if not 1 <= nodes <= MAX_NODES:
        raise DevClusterError(f"--nodes must be 1-{MAX_NODES}")
    if witness and nodes < 2:
        raise DevClusterError("--witness needs at least 2 nodes: a witness joins a cluster")
    directory = directory.resolve()
    if (directory / STATE_FILE).exists():
        raise DevClusterError(f"a dev cluster already runs in {directory}: "
                              f"corral dev-cluster down --dir {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o711)  # containers' mapped root must traverse to the rootfs
    # A random free /24, so that two dev clusters started at once do not pick the same one.
    net = HostNetwork(dev_prefix(directory), pick_subnet(host_routes(), random.Random()))
    state: dict[str, Any] = {"prefix": net.prefix, "subnet": net.subnet, "bridge": net.bridge,
                             "gateway": net.gateway, "members": []}
    members: list[DaemonProcess] = []
    try:
        write_state(directory, state)
        net.create()
        for index in range(1, nodes + 1):
            host = net.add_host(member_name(index))
            member = DaemonProcess(root=directory / host.name, bridge=container_bridge(index),
                                   address=container_network(index), netns=host.netns)
            state["members"].append({
                "name": host.name, "netns": host.netns, "veth": host.veth,
                "address": host.address, "corral_dir": str(member.root),
                "socket": str(member.socket), "container_bridge": member.bridge,
                "container_network": member.address, "pid": None})
            write_state(directory, state)
            member.spawn()  # all daemons start at once; wait_ready below
            assert member.process is not None
            state["members"][-1]["pid"] = member.process.pid
            write_state(directory, state)
            members.append(member)
        for member in members:
            member.wait_ready()
        form_cluster(members, [m["address"].split("/")[0] for m in state["members"]],
                     join_seconds, witness, storage_backend)
    except BaseException:
        down(directory)
        raise
    print(describe(state))
    return members


def describe(state: dict[str, Any]) -> str:
    """How to reach each member, for a human."""
    lines = [f"dev cluster: bridge {state['bridge']} ({state['gateway']}), "
             f"{len(state['members'])} member(s)"]
    for m in state["members"]:
        lines.append(f"  {m['name']}: host address {m['address']} (netns {m['netns']}), "
                     f"daemon pid {m['pid']}, socket {m['socket']}")
        lines.append(f"      CORRAL_DIR={m['corral_dir']} corral list")
    return "\n".join(lines)


def down(directory: Path = DEFAULT_DIR) -> list[str]:
    """Remove every daemon, container, cgroup, namespace, veth and bridge of the dev
    cluster in ``directory``; idempotent, and works from names alone if the state file
    is missing (a crash before it was written)."""
    directory = directory.resolve()
    state = read_state(directory)
    roots = {Path(m["corral_dir"]): m for m in state.get("members", [])}
    roots.update({p: {} for p in directory.glob("m[0-9]*") if p.is_dir() and p not in roots})
    removed: list[str] = []
    for root, member in sorted(roots.items()):
        _stop_daemon(member.get("pid"), root)
        _detach_disk(member.get("disk"))
        _teardown_member(root, member.get("netns"))
        removed.append(f"member {root}")
    removed += teardown_prefix(str(state.get("prefix") or dev_prefix(directory)))
    (directory / STATE_FILE).unlink(missing_ok=True)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
    return removed


def _detach_disk(disk: dict[str, str] | None) -> None:
    """Unmount (lazily) and delete a disk that ``nemesis_disk.attach_disk`` left."""
    if not disk:
        return
    subprocess.run(["umount", "-l", disk["mount"]], capture_output=True, check=False)
    Path(disk["image"]).unlink(missing_ok=True)


def _stop_daemon(pid: int | None, root: Path, timeout: float = 20.0) -> None:
    """SIGTERM the daemon of ``root`` (checked by its environment, so a reused pid is
    never signalled), SIGKILL after ``timeout``. A daemon stopped by ``dev-cluster kill
    --signal STOP`` is continued first, so that it can act on the SIGTERM."""
    if pid is None or not is_daemon_of(pid, root):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
    kill_pids([pid], timeout)
    deadline = time.monotonic() + 5
    while is_daemon_of(pid, root) and time.monotonic() < deadline:
        time.sleep(0.05)


def is_daemon_of(pid: int, root: Path) -> bool:
    """Whether ``pid`` is (still) the corral daemon of ``root``: pids are reused, so
    the dev cluster signals only a process whose command and CORRAL_DIR match."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"daemon" in cmdline and f"CORRAL_DIR={root}".encode() in environ


def _teardown_member(root: Path, netns: str | None) -> None:
    """``devtools.teardown`` of one CORRAL_DIR, from inside its namespace when it exists
    (lxc-stop talks to the monitor over an abstract socket of that namespace)."""
    argv = [sys.executable, "-m", "devtools.teardown", str(root)]
    if netns and Path(netns_path(netns)).exists():
        subprocess.run(enter_argv(netns, argv), capture_output=True, timeout=300, check=False)
    teardown(root)
    shutil.rmtree(root, ignore_errors=True)


def write_state(directory: Path, state: dict[str, Any]) -> None:
    """Replace ``devcluster.json`` whole (write, then rename), so a reader never sees
    half of it."""
    tmp = directory / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(directory / STATE_FILE)


def read_state(directory: Path) -> dict[str, Any]:
    """``devcluster.json`` of ``directory``; ``{}`` when missing or unreadable."""
    try:
        state: dict[str, Any] = json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state

