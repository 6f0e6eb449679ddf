"""systemd's service notification protocol (``sd_notify(3)``), written natively.

A unit of ``Type=notify`` hands its main process a datagram socket in ``$NOTIFY_SOCKET``;
the service sends newline-separated ``KEY=VALUE`` assignments to it, one datagram per
call: ``READY=1`` once it serves (systemd then counts the unit as started, and units
ordered after it may start), ``STATUS=...`` (shown by ``systemctl status``),
``STOPPING=1`` when it begins to shut down. The address is a filesystem path, or an
abstract-namespace name written with a leading ``@`` (the ``@`` stands for the NUL
byte the kernel's address starts with). Other kinds (``vsock:``, systemd 254 and later)
are not spoken here: the notifier says so once and stays silent.

``Notifier.from_environ`` takes the variable out of the environment (as
``sd_notify(unset_environment=1)``), so no child of the daemon (lxc-start, dnsmasq,
QEMU, the fencing watchdog) inherits it and speaks for the daemon.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op. A failed send is logged
and never stops the daemon: readiness is advisory for systemd, the API serves anyway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

log = logging.getLogger(__name__)
NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
SEND_TIMEOUT = 5.0  # s; a datagram blocks only while the receiver's queue is full


def notify_address(value: str) -> str | bytes | None:
    """The socket address ``$NOTIFY_SOCKET`` names: a path (``/run/systemd/notify``), or
    bytes for an abstract name (``@name`` -> ``b"\\0name"``); None when unset or not a
    unix address (a relative path, ``vsock:...``)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def message(*assignments: str) -> bytes:
    """One datagram of ``KEY=VALUE`` lines. ValueError for a malformed assignment (a
    line break inside would forge another key; systemd reads each line as one)."""
    for item in assignments:
        key, sep, _ = item.partition("=")
        if not sep or not key or "\n" in item:
            raise ValueError(f"not a single KEY=VALUE assignment: {item!r}")
    return "\n".join(assignments).encode()


def send(address: str | bytes, data: bytes, timeout: float = SEND_TIMEOUT) -> None:
    """Send one datagram to ``address`` (blocking; raises OSError)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(data)


@dataclass(frozen=True)
class Notifier:
    """Where this process reports to systemd; ``address`` None: not under systemd."""

    address: str | bytes | None = None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        """Read and remove ``$NOTIFY_SOCKET`` (children must not inherit it)."""
        value = environ.pop(NOTIFY_SOCKET_ENV, "")
        address = notify_address(value)
        if value and address is None:
            log.warning("%s=%r is not a unix socket address: no readiness notification",
                        NOTIFY_SOCKET_ENV, value)
        return cls(address)

    @property
    def active(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``assignments`` as one datagram (blocking); True if sent. False when not
        under systemd or when the send failed (logged)."""
        if self.address is None:
            return False
        try:
            send(self.address, message(*assignments))
        except OSError as exc:
            log.warning("notifying systemd (%s) failed: %s", " ".join(assignments), exc)
            return False
        return True

    async def notify_async(self, *assignments: str) -> bool:
        """``notify`` in a worker thread (a full receiver queue blocks the send)."""
        if self.address is None:
            return False
        return await asyncio.to_thread(self.notify, *assignments)
