"""Namespace hosts on a private bridge: the machines of multi-host tests and ``dev-cluster``.

::

    root netns   <prefix>br  10.77.N.1/24        (the "switch"; no NAT, no route out)
                   |-- veth <prefix>-m1 ===== netns <prefix>-m1: eth0 10.77.N.2/24, lo,
                   |                                 default via 10.77.N.1
                   +-- veth <prefix>-m2 ===== netns <prefix>-m2: eth0 10.77.N.3/24 ...

Everything is named after ``prefix``, so ``teardown_prefix`` finds leftovers of a crashed
run by name alone. Commands enter a host with ``nsenter --net=/run/netns/NAME``, never
``ip netns exec``: that remounts /sys and loses the cgroup mounts LXC needs. All calls are
blocking and every host command has a timeout.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMMAND_TIMEOUT = 15.0
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
HOST_RE = re.compile(r"^[a-z][a-z0-9]{0,5}$")
NETNS_DIR = "/run/netns"

# Run inside a fresh mount namespace: mount a sysfs of the host's own network namespace
# (LXC and the driver look up bridges and veths in /sys/class/net) and move the inherited
# cgroup mounts back on top of it, which ``ip netns exec`` fails to do.
PRIVATE_SYSFS_SCRIPT = (
    'set -e; save="$1"; shift; mkdir -p "$save"; '
    'mount --rbind /sys/fs/cgroup "$save"; mount -t sysfs sysfs /sys; '
    'mount --move "$save" /sys/fs/cgroup; rmdir "$save" 2>/dev/null || true; exec "$@"')


class NetnsError(RuntimeError):
    """A host tool failed or a name or address is unusable; the message says which."""


# ---- pure helpers: names and addresses -------------------------------------------------

def check_prefix(prefix: str) -> str:
    """1-8 lowercase letters/digits, so every derived interface name fits in 15 chars."""
    if not PREFIX_RE.match(prefix):
        raise NetnsError(f"invalid prefix {prefix!r}: 1-8 of [a-z0-9], starting with a letter")
    return prefix


def check_host_name(name: str) -> str:
    """1-6 lowercase letters/digits (prefix + '-' + name must fit an ifname)."""
    if not HOST_RE.match(name):
        raise NetnsError(f"invalid host name {name!r}: 1-6 of [a-z0-9], starting with a letter")
    return name


def bridge_name(prefix: str) -> str:
    return f"{check_prefix(prefix)}br"


def netns_name(prefix: str, host: str) -> str:
    """The namespace and the host end of its veth share this name (at most 15 chars)."""
    return f"{check_prefix(prefix)}-{check_host_name(host)}"


def netns_path(netns: str) -> str:
    return f"{NETNS_DIR}/{netns}"


def gateway_address(subnet: str) -> str:
    """The bridge's own CIDR: the first host address of ``subnet``."""
    net = _network(subnet)
    return f"{net.network_address + 1}/{net.prefixlen}"


def host_address(subnet: str, index: int) -> str:
    """CIDR of the ``index``-th host (1-based): the address after the gateway's."""
    net = _network(subnet)
    if index < 1 or index + 1 >= net.num_addresses - 1:
        raise NetnsError(f"host index {index} does not fit in {subnet}")
    return f"{net.network_address + 1 + index}/{net.prefixlen}"


def pick_subnet(taken: Iterable[str], rng: random.Random | None = None,
                within: str = "10.77.0.0/16") -> str:
    """A /24 of ``within`` that overlaps none of ``taken`` (the host's routes: never probe).

    Without ``rng`` the lowest free one, so ``dev-cluster`` is predictable; tests pass an
    rng so that concurrent runs rarely race for the same subnet.
    """
    nets = [n for n in (ipaddress.ip_network(t, strict=False) for t in taken)
            if isinstance(n, ipaddress.IPv4Network)]
    pool = list(ipaddress.IPv4Network(within).subnets(new_prefix=24))
    if rng is not None:
        rng.shuffle(pool)
    for candidate in pool:
        if not any(candidate.overlaps(n) for n in nets):
            return str(candidate)
    raise NetnsError(f"no free /24 left in {within}")


def enter_argv(netns: str, argv: Sequence[str], private_sysfs: bool = False) -> list[str]:
    """``argv`` run inside ``netns``; the exec chain keeps the pid of the final program."""
    entered = ["nsenter", f"--net={netns_path(netns)}"]
    if private_sysfs:
        save = f"/run/corral-sysfs-{netns}"
        entered += ["unshare", "--mount", "--propagation", "private", "--",
                    "sh", "-c", PRIVATE_SYSFS_SCRIPT, "sh", save]
    return entered + list(argv)


def _network(subnet: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError as exc:
        raise NetnsError(f"invalid subnet {subnet!r}: {exc}") from exc
    if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > 29:
        raise NetnsError(f"invalid subnet {subnet!r}: want an IPv4 /29 or larger")
    return net


# ---- host commands ---------------------------------------------------------------------

def run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT, check: bool = True) -> str:
    """Run a host tool; failure (with ``check``) or timeout raises NetnsError with stderr."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(argv)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def host_routes() -> list[str]:
    """Destinations the root namespace routes, in any table (for ``pick_subnet``)."""
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]) or "[]")
    return [r["dst"] for r in routes if r.get("dst") not in (None, "default")]


def links() -> list[dict[str, Any]]:
    """Links of the root namespace, from iproute2 (not /sys: see the module docstring)."""
    return list(json.loads(run(["ip", "-j", "-d", "link", "show"]) or "[]"))


def namespaces() -> list[str]:
    """Names under /run/netns."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def pids_in(netns: str) -> list[int]:
    """Processes whose network namespace is ``netns`` (``ip netns pids``)."""
    out = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def kill_pids(pids: Iterable[int], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL whoever is still there after ``timeout``."""
    alive = set(pids)
    for pid in alive:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if _exists(p)}
        time.sleep(0.05)
    for pid in alive:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def teardown_prefix(prefix: str) -> list[str]:
    """Remove every namespace, veth and bridge named after ``prefix``; idempotent.

    Works after a crash, from names alone. Processes inside our namespaces are killed
    (by pid): only we create namespaces with this prefix, so only we started them.
    Returns what was removed, for messages.
    """
    check_prefix(prefix)
    removed: list[str] = []
    for ns in namespaces():
        if ns.startswith(f"{prefix}-"):
            kill_pids(pids_in(ns))
            run(["ip", "netns", "del", ns], check=False)
            removed.append(f"netns {ns}")
    for link in links():
        name = str(link.get("ifname", ""))
        kind = link.get("linkinfo", {}).get("info_kind")
        if (name.startswith(f"{prefix}-") and kind == "veth") or \
                (name == bridge_name(prefix) and kind == "bridge"):
            run(["ip", "link", "del", "dev", name], check=False)
            removed.append(f"{kind} {name}")
    return removed


# ---- the hosts -------------------------------------------------------------------------

@dataclass
class Host:
    """One namespace host: its netns, the host end of its veth and its eth0 address."""

    name: str
    netns: str
    veth: str
    address: str  # eth0's CIDR, e.g. 10.77.3.2/24
    gateway: str  # the bridge's CIDR
    pids: list[int] = field(default_factory=list, repr=False)

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    def argv(self, argv: Sequence[str], private_sysfs: bool = False) -> list[str]:
        return enter_argv(self.netns, argv, private_sysfs)

    def run(self, argv: Sequence[str], timeout: float = 60.0, check: bool = True,
            **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` inside this host and wait; ``check`` raises NetnsError on failure."""
        proc: subprocess.CompletedProcess[bytes] = subprocess.run(
            self.argv(argv), timeout=timeout, capture_output=True, check=False, **kwargs)
        if check and proc.returncode != 0:
            raise NetnsError(f"{self.name}: {' '.join(argv)} failed ({proc.returncode}): "
                             f"{proc.stderr.decode(errors='replace').strip()}")
        return proc

    def popen(self, argv: Sequence[str], private_sysfs: bool = False,
              **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside this host; its pid is remembered so teardown can stop it."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.argv(argv, private_sysfs),
                                                         **kwargs)
        self.pids.append(proc.pid)
        return proc


class HostNetwork:
    """A bridge ``<prefix>br`` on ``subnet`` and namespace hosts plugged into it."""

    def __init__(self, prefix: str, subnet: str) -> None:
        self.prefix = check_prefix(prefix)
        self.subnet = str(_network(subnet))
        self.bridge = bridge_name(prefix)
        self.gateway = gateway_address(subnet)
        self.hosts: dict[str, Host] = {}

    def create(self) -> None:
        """Make the bridge; refuses (NetnsError) if one of this prefix already exists."""
        if any(link.get("ifname") == self.bridge for link in links()):
            raise NetnsError(f"bridge {self.bridge} exists: a previous run left it; "
                             f"remove it with teardown_prefix({self.prefix!r})")
        run(["ip", "link", "add", "name", self.bridge, "type", "bridge"])
        run(["ip", "addr", "add", self.gateway, "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])

    def add_host(self, name: str) -> Host:
        """A new netns with eth0 on the bridge (the next address), lo up, default route."""
        netns = netns_name(self.prefix, name)
        host = Host(name, netns, netns, host_address(self.subnet, len(self.hosts) + 1),
                    self.gateway)
        run(["ip", "netns", "add", netns])
        self.hosts[name] = host
        run(["ip", "link", "add", "name", host.veth, "type", "veth",
             "peer", "name", "eth0", "netns", netns])
        run(["ip", "link", "set", host.veth, "master", self.bridge, "up"])
        inside = ["nsenter", f"--net={netns_path(netns)}", "ip"]
        run([*inside, "link", "set", "lo", "up"])
        run([*inside, "addr", "add", host.address, "dev", "eth0"])
        run([*inside, "link", "set", "eth0", "up"])
        run([*inside, "route", "add", "default", "via", self.gateway.split("/")[0]])
        return host

    def teardown(self) -> list[str]:
        """Stop what we started (by pid), then remove everything named after our prefix."""
        kill_pids(pid for host in self.hosts.values() for pid in host.pids)
        self.hosts.clear()
        return teardown_prefix(self.prefix)
