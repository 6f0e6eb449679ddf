"""The daemon's HTTPS listener and who is trusted on it.

The same aiohttp application serves the unix socket and, when
``core.https_address`` is set, a TLS ``TCPSite``. Changing the key (``PUT``/``PATCH
/1.0``, ``corral init --auto --address``) starts, moves or stops the listener at
once. A TLS client is trusted when its certificate's fingerprint is in the
replicated trust store; the unix socket (root, and the ``corral`` group when it
exists: ``unix_socket``) is always trusted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web

from cluster.local_config import LocalConfig
from cluster.state.raft import RaftStore
from corral_shared import tls
from corral_shared.errors import bad_request

log = logging.getLogger(__name__)

DEFAULT_PORT = 8443
RAFT_PORT_OFFSET = 1  # Raft listens next to the member's HTTPS port
ADDRESS_KEY = "core.https_address"
# Server keys each member keeps for itself (in cluster.yaml), as LXD's member-local keys.
VM_ACCELERATOR_KEY = "core.vm_accelerator"  # auto | kvm | tcg (node_agent accel_choice)
METRICS_ADDRESS_KEY = "core.metrics_address"
MEMBER_LOCAL_KEYS = frozenset({ADDRESS_KEY, VM_ACCELERATOR_KEY, METRICS_ADDRESS_KEY})
METRICS_AUTH_KEY = "core.metrics_authentication"
CLIENT, METRICS_TYPE = "client", "metrics"  # certificate types, as LXD's
EXPIRY_KEY = "core.remote_token_expiry"
DEFAULT_TOKEN_SECONDS = 3600.0
_EXPIRY_UNITS = {"S": 1, "M": 60, "H": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400,
                 "y": 365 * 86400}
_EXPIRY_PART = re.compile(r"(\d+)\s*([SMHdwmy]?)")


@dataclass(frozen=True)
class Identity:
    """This server's certificate: what clients pin and what ``GET /1.0`` shows."""

    crt: Path
    key: Path
    cert_pem: str
    fingerprint: str

    @classmethod
    def load(cls, root: Path) -> Identity:
        """Load ``$CORRAL_DIR/server.crt``/``server.key``, generating them if missing."""
        pem = tls.ensure_server_cert(root).decode()
        return cls(root / "server.crt", root / "server.key", pem,
                   tls.fingerprint(tls.pem_to_der(pem)))


def parse_address(value: str) -> tuple[str | None, int]:
    """``HOST[:PORT]`` (IPv6 in brackets) to ``(host, port)``; host ``None`` = every address.

    Raises ``ValueError`` with a message fit for the user.
    """
    text = value.strip()
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"Invalid address {value!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        port_text = ""
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"Invalid port in address {value!r}")
        port = int(port_text)
    if host in ("", "::"):
        return None, port
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ValueError(f"Invalid address {value!r}") from None
    return host, port


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def token_lifetime(config: dict[str, str]) -> float:
    """Seconds a new trust token lives: ``core.remote_token_expiry`` in LXD's units
    (``30M``, ``2H``, ``1d``; a bare number is seconds), else one hour."""
    text = config.get(EXPIRY_KEY, "").strip()
    if not text:
        return DEFAULT_TOKEN_SECONDS
    parts = _EXPIRY_PART.findall(text)
    if not parts or _EXPIRY_PART.sub("", text).strip():
        raise bad_request(f"Invalid {EXPIRY_KEY} {text!r}")
    return float(sum(int(n) * _EXPIRY_UNITS[unit or "S"] for n, unit in parts))


def check_https_config(config: object) -> None:
    """Refuse (400) a server config whose HTTPS keys are malformed, before it is committed."""
    if not isinstance(config, dict):
        return
    for key in (ADDRESS_KEY, METRICS_ADDRESS_KEY):
        address = config.get(key)
        if address:
            try:
                parse_address(str(address))
            except ValueError as exc:
                raise bad_request(f"{key}: {exc}") from exc
    metrics = str(config.get(METRICS_ADDRESS_KEY) or "")
    if metrics and parse_address(metrics) == parse_address(str(config.get(ADDRESS_KEY) or
                                                                "")):
        raise bad_request(f"{METRICS_ADDRESS_KEY} must differ from {ADDRESS_KEY}")
    auth = str(config.get(METRICS_AUTH_KEY, "")).strip().lower()
    if auth not in ("", "true", "false"):
        raise bad_request(f"{METRICS_AUTH_KEY} must be true or false")
    token_lifetime({EXPIRY_KEY: str(config.get(EXPIRY_KEY, ""))})


def _host_addresses(ipv4_only: bool) -> list[str]:
    """Global addresses of this host, for a wildcard listener (as LXD lists them)."""
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, timeout=5,
                             check=True).stdout
        ifaces = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    found = []
    for iface in ifaces:
        for info in iface.get("addr_info", []):
            if info.get("scope") == "global" and not (ipv4_only and info.get("family") != "inet"):
                found.append(str(info["local"]))
    return found


def listen_addresses(value: str) -> list[str]:
    """The ``host:port`` strings clients can use for ``core.https_address`` = ``value``."""
    if not value:
        return []
    try:
        host, port = parse_address(value)
    except ValueError:
        return []
    if host is not None and host != "0.0.0.0":
        return [join_address(host, port)]
    return [join_address(a, port) for a in _host_addresses(ipv4_only=host == "0.0.0.0")]


def raft_address_for(https_address: str) -> str:
    """``HOST:PORT`` of Raft for a member whose API listens on ``https_address``."""
    host, _, port = https_address.rpartition(":")
    if not host or not port.isdigit():
        raise bad_request(f"Invalid member address {https_address!r}: want HOST:PORT")
    return f"{host}:{int(port) + RAFT_PORT_OFFSET}"


class ListenerHost(Protocol):
    """What the listener reads of its member to know where to listen (the API's Context
    is one; the listener does not import the API)."""

    @property
    def member(self) -> str: ...

    @property
    def store(self) -> RaftStore: ...

    @property
    def local(self) -> LocalConfig | None: ...


class HttpsListener:
    """Owns the TLS site of the app's runner and keeps it on ``core.https_address``."""

    what = "https"

    def __init__(self, identity: Identity, host: ListenerHost) -> None:
        self.identity = identity
        self.host = host
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._address = ""
        self._lock = asyncio.Lock()
        self._ssl: ssl.SSLContext | None = None  # made on first use: a failure stays HTTPS's

    def attach(self, runner: web.AppRunner) -> None:
        self._runner = runner

    @property
    def address(self) -> str:
        return self._address

    def wanted(self) -> str | None:
        """Where to listen ("" = nowhere), or None to keep what listens."""
        me = self.host
        if me.local is not None and me.local.clustered:
            with me.store.read() as state:
                member = state.members.get(me.member)
                if member is None:
                    return None  # the replica is being rebuilt (joining): keep what listens
                return member.address  # each member listens on its own address
        return me.local.config.get(ADDRESS_KEY, "").strip() if me.local else ""

    def serves(self, request: web.Request) -> bool:
        """Whether ``request`` came in through this listener's socket."""
        transport = request.transport
        site = self._site
        if transport is None or site is None or site._server is None:
            return False
        here = transport.get_extra_info("sockname")
        sockets = getattr(site._server, "sockets", None) or []
        return any(here == sock.getsockname() for sock in sockets)

    async def reconcile(self) -> None:
        """Listen on the configured address (or stop listening); raises ``ApiError`` (400)
        when the address is invalid or cannot be bound."""
        wanted = self.wanted()
        if wanted is None:
            return
        async with self._lock:
            if wanted == self._address or self._runner is None:
                return
            if self._site is not None:
                await self._site.stop()
                self._site, self._address = None, ""
                log.info("%s listener stopped", self.what)
            if not wanted:
                return
            try:
                host, port = parse_address(wanted)
                if self._ssl is None:
                    self._ssl = tls.server_context(self.identity.crt, self.identity.key)
                site = web.TCPSite(self._runner, host, port, ssl_context=self._ssl,
                                   reuse_address=True)
                await site.start()
            except (ValueError, OSError, RuntimeError) as exc:
                raise bad_request(f"Cannot listen on {self.what} socket {wanted!r}: {exc}") from exc
            self._site, self._address = site, wanted
            log.info("%s listener on %s (fingerprint %s)", self.what, wanted,
                     self.identity.fingerprint)

    async def set_identity(self, identity: Identity) -> None:
        """Serve a new certificate (a joining member adopts the cluster's)."""
        async with self._lock:
            self.identity = identity
            self._ssl = tls.server_context(identity.crt, identity.key)
            if self._site is not None:
                await self._site.stop()
                self._site, self._address = None, ""
        await self.reconcile()

    async def close(self) -> None:
        async with self._lock:
            if self._site is not None:
                await self._site.stop()
                self._site, self._address = None, ""


class MetricsListener(HttpsListener):
    """A TLS site on ``core.metrics_address`` (member-local, as in LXD) that serves
    ``/1.0/metrics`` and nothing else (``app.access_middleware``), so a scraper can be
    let through a firewall to metrics without reaching the API."""

    what = "metrics"

    def wanted(self) -> str | None:
        me = self.host
        return me.local.config.get(METRICS_ADDRESS_KEY, "").strip() if me.local else ""


HTTPS: web.AppKey[HttpsListener] = web.AppKey("https", HttpsListener)
METRICS_LISTENER: web.AppKey[MetricsListener] = web.AppKey("metrics_listener", MetricsListener)


async def reconcile(request: web.Request) -> None:
    """After a config change: bring the HTTPS and metrics listeners in line (no-op
    without them)."""
    for key in (HTTPS, METRICS_LISTENER):
        listener = request.app.get(key)
        if listener is not None:
            await listener.reconcile()


UNIX, MEMBER = "unix", "member"  # callers that are not certificates of the trust store


def caller_kind(request: web.Request, store: RaftStore) -> str:
    """Who is calling: ``unix`` (the unix socket), ``member`` (the cluster
    certificate), the type of the caller's certificate in the trust store (``client``,
    ``metrics``), or "" for an unknown or absent certificate."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport else None
    if isinstance(sockname, str) or sockname is None:
        return UNIX
    fingerprint = tls.peer_fingerprint(transport)
    if not fingerprint:
        return ""
    listener = request.app.get(HTTPS)
    if listener is not None and fingerprint == listener.identity.fingerprint:
        return MEMBER  # members share the cluster certificate
    with store.read() as state:
        cert = state.certificates.get(fingerprint)
        return (cert.type or CLIENT) if cert is not None else ""


def metrics_open(store: RaftStore) -> bool:
    """``core.metrics_authentication=false``: anyone may read metrics."""
    with store.read() as state:
        return state.config.get(METRICS_AUTH_KEY, "true").strip().lower() == "false"


def may_read_metrics(request: web.Request, store: RaftStore) -> bool:
    return (caller_kind(request, store) in (UNIX, MEMBER, CLIENT, METRICS_TYPE)
            or metrics_open(store))


def is_trusted(request: web.Request, store: RaftStore) -> bool:
    """The unix socket is trusted (as LXD's: only root and the ``corral`` group may
    connect, ``unix_socket``); a TLS client is trusted when its certificate is in the
    trust store (``store``'s replica) as a ``client``, or is the cluster's (another
    member). A ``metrics`` certificate is not: it reads metrics only."""
    return caller_kind(request, store) in (UNIX, MEMBER, CLIENT)
