"""Host side of the in-guest exec agent (protocol: ``node_agent/images/vm_guest.py``).

The guest's virtio-serial port ends on the host in ``<vm dir>/agent.sock``. That socket
serves one client at a time, so callers (threads or processes) take ``agent.lock`` first.
A reply left over from an abandoned call is skipped by its id/nonce.

Errors (both ``DriverError``):

- :class:`AgentUnavailable` (503): the VM is not running, or nothing answered HELLO in
  time (the image has no corral agent, or the guest has not booted yet);
- :class:`AgentError` (500): the agent broke the protocol or the command timed out.

``python -m node_agent.drivers.qemu.vm_exec`` is the command-line front end.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import secrets
import socket
import time
from io import BufferedIOBase
from pathlib import Path
from typing import NamedTuple

from node_agent.drivers.base import DriverError

SOCKET = "agent.sock"
LOCK = "agent.lock"
HELLO_TIMEOUT = 5.0
_MAX_LINE = 8 << 20


class AgentUnavailable(DriverError):
    code = 503


class AgentError(DriverError):
    code = 500


class ExecResult(NamedTuple):
    exit_code: int
    stdout: bytes
    stderr: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encode_exec(request_id: str, argv: list[str], timeout: float) -> bytes:
    """The EXEC request line (arguments must not contain NUL)."""
    if not argv:
        raise AgentError("exec needs a command")
    if any("\0" in arg for arg in argv):
        raise AgentError("exec arguments cannot contain NUL bytes")
    limit = 0 if timeout <= 0 else max(1, int(timeout + 0.999))
    fields = ["EXEC", request_id, str(limit), *(_b64(arg.encode()) for arg in argv)]
    return " ".join(fields).encode() + b"\n"


def parse_result(line: bytes, request_id: str) -> ExecResult | None:
    """The result in ``line`` if it answers ``request_id``; None for any other line."""
    fields = line.decode("ascii", errors="replace").split()
    if len(fields) != 5 or fields[:2] != ["RESULT", request_id]:
        return None
    try:
        return ExecResult(int(fields[2]), base64.b64decode(fields[3][1:], validate=True),
                          base64.b64decode(fields[4][1:], validate=True))
    except (ValueError, binascii.Error) as exc:
        raise AgentError(f"malformed agent reply: {line[:200]!r}") from exc


def _read_until(stream: BufferedIOBase, sock: socket.socket, deadline: float,
                wanted: bytes) -> bytes:
    """The next line starting with ``wanted`` before ``deadline``; b"" on timeout."""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            line = stream.readline(_MAX_LINE)
        except TimeoutError:
            return b""
        if not line:
            raise AgentUnavailable("the VM closed the agent channel (it stopped?)")
        if line.startswith(wanted):
            return line
    return b""


def exec_in_vm(vm_dir: Path, argv: list[str], timeout: float = 60.0,
               hello_timeout: float = HELLO_TIMEOUT, lock_timeout: float | None = None,
               slack: float = 10.0) -> ExecResult:
    """Run ``argv`` in the guest as root, in ``/``, stdin from /dev/null.

    ``timeout`` (s, <= 0: none) is enforced in the guest (the command is killed, exit 137)
    and on the host ``slack`` s later. ``lock_timeout``: how long to wait for the agent
    while another call holds it (None: as long as that takes); AgentUnavailable after.
    Raises AgentUnavailable, AgentError."""
    vm_dir = Path(vm_dir)
    request = encode_exec(secrets.token_hex(4), argv, timeout)
    request_id = request.split(b" ")[1].decode()
    with open(vm_dir / LOCK, "a+b") as lock:
        _take(lock, lock_timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.settimeout(hello_timeout)
                sock.connect(str(vm_dir / SOCKET))
            except OSError as exc:
                raise AgentUnavailable(f"no agent socket in {vm_dir} (is the VM running?): "
                                       f"{exc}") from exc
            with sock.makefile("rwb") as stream:
                _hello(stream, sock, hello_timeout)
                stream.write(request)
                stream.flush()
                deadline = time.monotonic() + (timeout + slack if timeout > 0 else 1e9)
                while line := _read_until(stream, sock, deadline, b"RESULT "):
                    if (result := parse_result(line, request_id)) is not None:
                        return result
                raise AgentError(f"no result from the agent within {timeout:g} s")
        except OSError as exc:
            raise AgentUnavailable(f"agent channel of {vm_dir} failed: {exc}") from exc
        finally:
            sock.close()


def _take(lock: BufferedIOBase, timeout: float | None) -> None:
    """Lock the agent for this call, waiting at most ``timeout`` s (None: forever)."""
    if timeout is None:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise AgentUnavailable(f"the agent is busy with another call for more "
                                       f"than {timeout:g} s") from None
            time.sleep(0.02)


def _hello(stream: BufferedIOBase, sock: socket.socket, timeout: float) -> None:
    nonce = secrets.token_hex(4)
    stream.write(f"HELLO {nonce}\n".encode())
    stream.flush()
    deadline = time.monotonic() + timeout
    if not _read_until(stream, sock, deadline, f"OK {nonce} corral-agent ".encode()):
        raise AgentUnavailable(f"no answer from a corral agent within {timeout:g} s: the "
                               f"image has no agent, or the guest has not booted yet")


def wait_for_agent(vm_dir: Path, timeout: float) -> None:
    """Return once the agent answers; AgentUnavailable after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            exec_in_vm(vm_dir, ["true"], timeout=10,
                       hello_timeout=max(0.5, min(HELLO_TIMEOUT, deadline - time.monotonic())))
            return
        except AgentUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
