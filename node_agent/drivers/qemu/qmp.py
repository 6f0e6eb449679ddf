"""A small synchronous QMP client: one short connection per call (and ``Monitor``, a
held connection with events, for a live migration's switchover).

Why not the ``qemu.qmp`` asyncio client: drivers are blocking and run in worker threads
(``asyncio.to_thread``), so an asyncio client would need an event loop per thread or a
loop thread of its own. And a QMP socket serves one client at a time: a connection held
open by one driver instance would lock out another one re-attaching to the same VM (a
restarted daemon, a CLI). So each call connects, negotiates capabilities, runs one
command and closes; that costs ~1 ms on a unix socket.

Errors: :class:`QmpError` (QEMU answered with an error, ``klass`` is its class) and
:class:`QmpUnavailable` (no QEMU behind the socket, or it stopped answering); both are
``DriverError`` s.
"""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node_agent.drivers.base import DriverError

TIMEOUT = 10.0
MAX_EVENTS_BEFORE_GREETING = 64
_MAX_LINE = 1 << 24
# QEMU serves one QMP client at a time and its listen backlog is tiny: a connect beyond
# it fails at once with EAGAIN. Threads of this process take turns per socket; other
# processes are retried until the timeout.
_turns: dict[str, threading.Lock] = {}
_turns_guard = threading.Lock()


class QmpUnavailable(DriverError):
    """Nothing answers on the QMP socket (QEMU not running, or hung)."""

    code = 503


class QmpError(DriverError):
    """QEMU refused a command."""

    def __init__(self, command: str, klass: str, desc: str) -> None:
        super().__init__(f"QMP {command}: {klass}: {desc}")
        self.klass = klass
        self.desc = desc


def _read_message(reader: Any, path: Path) -> dict[str, Any]:
    line = reader.readline(_MAX_LINE)
    if not line:
        raise QmpUnavailable(f"QMP socket {path}: connection closed by QEMU")
    return _parse(line, path)


def _greeting(reader: Any, path: Path) -> dict[str, Any]:
    """QEMU's greeting. Events may come first: QEMU can flush an event queued around the
    previous client's disconnect (a job's status change during a migration) to the next
    connection before greeting it."""
    for _ in range(MAX_EVENTS_BEFORE_GREETING):
        message = _read_message(reader, path)
        if "QMP" in message:
            return message
        if "event" not in message:
            break
    raise QmpUnavailable(f"QMP socket {path}: no greeting: {json.dumps(message)[:200]}")


def _answered(message: dict[str, Any], command: str) -> bool:
    """Whether ``message`` answers ``command`` (not an event); QmpError if QEMU refused."""
    if "error" in message:
        error = message["error"] if isinstance(message["error"], dict) else {}
        raise QmpError(command, str(error.get("class", "GenericError")),
                       str(error.get("desc", "")))
    return "return" in message


def _reply(reader: Any, path: Path, command: str) -> Any:
    """The answer to the command just sent (events before it are skipped)."""
    while True:
        message = _read_message(reader, path)
        if _answered(message, command):
            return message["return"]


def execute(path: Path, command: str, arguments: dict[str, Any] | None = None,
            timeout: float = TIMEOUT) -> Any:
    """Run one QMP command on the socket ``path`` and return its ``return`` value.

    Raises QmpUnavailable if nothing answers within ``timeout`` s, QmpError if QEMU
    refuses the command."""
    with _turns_guard:
        turn = _turns.setdefault(str(path), threading.Lock())
    if not turn.acquire(timeout=timeout):
        raise QmpUnavailable(f"QMP socket {path}: busy for {timeout:g} s")
    try:
        return _execute(path, command, arguments, timeout)
    finally:
        turn.release()


def _connect(path: Path, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EAGAIN or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


def _execute(path: Path, command: str, arguments: dict[str, Any] | None,
             timeout: float) -> Any:
    try:
        sock = _connect(path, timeout)
    except OSError as exc:
        raise QmpUnavailable(f"QMP socket {path}: {exc}") from exc
    try:
        with sock.makefile("rwb") as stream:
            _greeting(stream, path)
            for name, args in (("qmp_capabilities", None), (command, arguments)):
                request: dict[str, Any] = {"execute": name}
                if args:
                    request["arguments"] = args
                stream.write(json.dumps(request).encode() + b"\n")
                stream.flush()
                result = _reply(stream, path, name)
            return result
    except OSError as exc:  # socket.timeout is an OSError
        raise QmpUnavailable(f"QMP socket {path}: {exc}") from exc
    finally:
        sock.close()


class Monitor:
    """A held QMP connection that keeps QEMU's events: a live migration waits on them at
    its switchover, where each millisecond of polling would be guest downtime. Use the
    VM's second monitor socket (``cmdline.MIGRATION_QMP``): a held connection locks out
    every other client of its socket, and the driver's short calls use the first."""

    def __init__(self, path: Path, timeout: float = TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._buffer = bytearray()
        try:
            self._sock = _connect(path, timeout)
        except OSError as exc:
            raise QmpUnavailable(f"QMP socket {path}: {exc}") from exc
        try:
            deadline = time.monotonic() + timeout
            for _ in range(MAX_EVENTS_BEFORE_GREETING):
                message = self._message(deadline)
                if "QMP" in message:
                    break
            else:
                raise QmpUnavailable(f"QMP socket {path}: no greeting")
            self.execute("qmp_capabilities")
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run ``command``; events that come before its answer are kept."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise QmpUnavailable(f"QMP socket {self.path}: {exc}") from exc
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._message(deadline)
            if _answered(message, command):
                return message["return"]
            if "event" in message:
                self.events.append(message)

    def take_event(self, wanted: Callable[[dict[str, Any]], bool],
                   timeout: float) -> dict[str, Any] | None:
        """The first event (kept or arriving within ``timeout`` s) that ``wanted``
        accepts, removed from those kept; None when none came in time."""
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if wanted(event):
                    return self.events.pop(index)
            line = self._line(deadline)
            if line is None:
                return None
            message = _parse(line, self.path)
            if "event" in message:
                self.events.append(message)

    def _message(self, deadline: float) -> dict[str, Any]:
        line = self._line(deadline)
        if line is None:
            raise QmpUnavailable(f"QMP socket {self.path}: no answer in time")
        return _parse(line, self.path)

    def _line(self, deadline: float) -> bytes | None:
        """The next line, or None at ``deadline`` (no partial line is lost)."""
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                return None
            except OSError as exc:
                raise QmpUnavailable(f"QMP socket {self.path}: {exc}") from exc
            if not chunk:
                raise QmpUnavailable(f"QMP socket {self.path}: connection closed by QEMU")
            self._buffer += chunk
            if len(self._buffer) > _MAX_LINE:
                raise QmpUnavailable(f"QMP socket {self.path}: message too long")
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line


def _parse(line: bytes, path: Path) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise QmpUnavailable(f"QMP socket {path}: invalid message {line[:200]!r}") from exc
    if not isinstance(message, dict):
        raise QmpUnavailable(f"QMP socket {path}: unexpected message {line[:200]!r}")
    return message
