"""LXD's managed ``bridge`` network: a Linux bridge, its dnsmasq and its NAT rules.

::

    BridgeNetwork.ensure()
      +-- link      ip link add NAME type bridge; address; up     (iproute2)
      +-- firewall  MASQUERADE (+ ACCEPTs when a policy drops)     (firewall.py)
      +-- dnsmasq   DHCP + DNS on the bridge, a daemon of its own  (dnsmasq.py)

All calls are blocking and idempotent; each host command has a timeout.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from node_agent.network import firewall
from node_agent.network.dnsmasq import Dnsmasq, DnsmasqConfig
from node_agent.network.errors import NetworkError
from node_agent.network.hostcmd import run, write_sysctl

IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def validate_name(name: str) -> str:
    """A bridge name must be a Linux ifname: 1-15 chars, no '/', space or ':'."""
    if not IFNAME_RE.match(name):
        raise NetworkError(
            f"invalid network name {name!r}: 1-15 characters of letters, digits, '_', '-', '.',"
            " not starting with '-' or '.'")
    return name


def parse_address(cidr: str) -> ipaddress.IPv4Interface:
    """The bridge's own address, e.g. ``10.190.72.1/24``: IPv4, /8-/30, a host address."""
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError as exc:
        raise NetworkError(f"invalid ipv4.address {cidr!r}: {exc}") from exc
    if not isinstance(iface, ipaddress.IPv4Interface) or "/" not in cidr:
        raise NetworkError(f"invalid ipv4.address {cidr!r}: want an IPv4 CIDR like 10.0.0.1/24")
    net = iface.network
    if not 8 <= net.prefixlen <= 30:
        raise NetworkError(f"invalid ipv4.address {cidr!r}: prefix must be /8 to /30")
    if iface.ip in (net.network_address, net.broadcast_address):
        raise NetworkError(f"invalid ipv4.address {cidr!r}: network or broadcast address")
    return iface


def dhcp_range(cidr: str) -> tuple[str, str]:
    """The DHCP pool: the largest run of host addresses that leaves out the gateway."""
    iface = parse_address(cidr)
    first = iface.network.network_address + 1
    last = iface.network.broadcast_address - 1
    gateway = iface.ip
    runs = []
    if gateway > first:
        runs.append((first, gateway - 1))
    if gateway < last:
        runs.append((gateway + 1, last))
    low, high = max(runs, key=lambda r: int(r[1]) - int(r[0]))
    return str(low), str(high)


def pick_subnet(taken: Iterable[str], rng: random.Random, within: str = "10.0.0.0/8") -> str:
    """LXD's ``ipv4.address=auto``: a random /24 gateway address clear of ``taken`` networks.

    ``taken`` comes from the host's routes (``host_ipv4_networks``), never from
    probing: a proxy here answers every connect.
    """
    nets = [n for n in (ipaddress.ip_network(t, strict=False) for t in taken)
            if isinstance(n, ipaddress.IPv4Network)]
    pool = list(ipaddress.IPv4Network(within).subnets(new_prefix=24))
    for candidate in rng.sample(pool, min(len(pool), 4096)):
        if not any(candidate.overlaps(n) for n in nets):
            return f"{candidate.network_address + 1}/24"
    raise NetworkError(f"no free /24 left in {within}", code=500)


def host_ipv4_networks() -> list[str]:
    """Networks the host already routes, in any table, for ``pick_subnet``."""
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]) or "[]")
    return [r["dst"] for r in routes if r.get("dst") not in (None, "default")]


class BridgeNetwork:
    """A managed bridge network; every method is idempotent and blocking."""

    def __init__(self, name: str, ipv4_address: str, state_dir: Path, nat: bool = True,
                 description: str = "") -> None:
        self.name = validate_name(name)
        self.address = parse_address(ipv4_address)
        self.state_dir = Path(state_dir)
        self.nat = nat
        self.description = description
        first, last = dhcp_range(ipv4_address)
        self.dnsmasq = Dnsmasq(DnsmasqConfig(
            bridge=name, address=str(self.address.ip), dhcp_first=first, dhcp_last=last,
            state_dir=self.state_dir))
        with _LOCKS_GUARD:  # one lock per bridge name, shared by every instance of it
            self._lock = _LOCKS.setdefault(name, threading.Lock())

    @property
    def comment(self) -> str:
        """The tag on each of our iptables rules."""
        return f"corral {self.name}"

    def exists(self) -> bool:
        """True if a bridge of this name exists in our network namespace."""
        return _link_kind(self.name) == "bridge"

    def ensure(self) -> None:
        """Bring bridge, firewall and dnsmasq to the wanted state; cheap when already there.

        Raises NetworkError(409) if an interface of this name exists and is not a
        bridge, NetworkCommandError if a host tool fails.
        """
        with self._lock:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.state_dir.chmod(0o711)
            self._ensure_link()
            firewall.ensure_rules(self.name, str(self.address.network), self.nat, self.comment)
            self.dnsmasq.ensure()

    def teardown(self) -> None:
        """Stop our dnsmasq, drop our rules, delete the bridge and our state files."""
        with self._lock:
            self.dnsmasq.stop()
            firewall.remove_rules(self.comment)
            if _link_kind(self.name) is not None:
                self._check_is_bridge()
                run(["ip", "link", "del", "dev", self.name])
            cfg = self.dnsmasq.config
            for path in (cfg.pid_file, cfg.lease_file, cfg.hosts_file, cfg.log_file):
                path.unlink(missing_ok=True)
            if self.state_dir.is_dir() and not any(self.state_dir.iterdir()):
                self.state_dir.rmdir()

    def leases(self) -> list[dict[str, Any]]:
        """DHCP leases: ``{mac, address, hostname, expires}`` per client."""
        return self.dnsmasq.leases()

    def info(self) -> dict[str, Any]:
        """The network in LXD's ``GET /1.0/networks/NAME`` shape (callers fill used_by)."""
        return {
            "name": self.name, "description": self.description, "type": "bridge",
            "managed": True, "status": "Created",
            "config": {"ipv4.address": str(self.address),
                       "ipv4.nat": "true" if self.nat else "false", "ipv6.address": "none"},
            "used_by": [], "locations": ["none"],
        }

    def _check_is_bridge(self) -> None:
        if not self.exists():
            raise NetworkError(f"interface {self.name} exists and is not a bridge", code=409)

    def _ensure_link(self) -> None:
        if _link_kind(self.name) is None:
            run(["ip", "link", "add", "name", self.name, "address", _stable_mac(self.name),
                 "type", "bridge", "forward_delay", "0"])
        self._check_is_bridge()
        if Path("/proc/sys/net/ipv6/conf", self.name).is_dir():  # ipv6.address=none, as LXD
            write_sysctl(f"net/ipv6/conf/{self.name}/disable_ipv6", "1")
        wanted = (str(self.address.ip), self.address.network.prefixlen)
        flags, have = _link_state(self.name)
        for addr in have:
            if addr != wanted:
                run(["ip", "addr", "del", f"{addr[0]}/{addr[1]}", "dev", self.name])
        if wanted not in have:
            run(["ip", "addr", "add", str(self.address), "dev", self.name])
        if "UP" not in flags:
            run(["ip", "link", "set", "dev", self.name, "up"])


def list_host_interfaces(exclude: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The host's interfaces as LXD's unmanaged networks (``managed: false``).

    Like LXD, veth devices are left out, and so are ``exclude`` (the managed
    networks, which the caller lists in their managed shape). Ordered by ifindex.
    """
    skip = set(exclude)
    return [{"name": link["ifname"], "description": "", "type": _interface_type(link),
             "managed": False, "status": "", "config": {}, "used_by": [], "locations": None}
            for link in _links()
            if link["ifname"] not in skip and not link["ifname"].startswith("veth")]


def _interface_type(link: dict[str, Any]) -> str:
    """LXD's classification: loopback, bridge, vlan, bond, physical, else unknown."""
    kind = link.get("linkinfo", {}).get("info_kind")
    if link.get("link_type") == "loopback":
        return "loopback"
    if kind in ("bridge", "openvswitch"):
        return "bridge"
    if kind in ("vlan", "bond"):
        return str(kind)
    if kind is None and link.get("link_type") == "ether":
        return "physical"
    return "unknown"


def _links() -> list[dict[str, Any]]:
    """Every link of our network namespace, from iproute2.

    Not /sys/class/net: a daemon entered into a namespace with ``nsenter --net``
    still sees the host's sysfs there.
    """
    links: list[dict[str, Any]] = json.loads(run(["ip", "-j", "-d", "link", "show"]) or "[]")
    return sorted(links, key=lambda link: int(link.get("ifindex", 0)))


def _link_kind(ifname: str) -> str | None:
    """None if no such link, "" for a link without a kind (a NIC), else e.g. "bridge"."""
    for link in _links():
        if link.get("ifname") == ifname:
            return str(link.get("linkinfo", {}).get("info_kind", ""))
    return None


def _stable_mac(name: str) -> str:
    """A fixed MAC in LXD's 00:16:3e range, so the bridge's MAC never follows its ports."""
    digest = hashlib.sha256(name.encode()).digest()
    return "00:16:3e:" + ":".join(f"{b:02x}" for b in digest[:3])


def _link_state(ifname: str) -> tuple[list[str], list[tuple[str, int]]]:
    """The link's flags and its IPv4 addresses, from one ``ip`` call (two without an address)."""
    data = json.loads(run(["ip", "-j", "-4", "addr", "show", "dev", ifname]) or "[]")
    if not data:  # ip -4 prints nothing for a link without IPv4 addresses
        data = json.loads(run(["ip", "-j", "link", "show", "dev", ifname]) or "[]")
    flags = [f for link in data for f in link.get("flags", [])]
    addrs = [(a["local"], int(a["prefixlen"])) for link in data
             for a in link.get("addr_info", []) if a.get("family") == "inet"]
    return flags, addrs
