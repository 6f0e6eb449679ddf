"""A QMP relay that lies about the run state (tests only): QEMU's monitor moves to
``<path>.real`` and this relays ``<path>`` to it, answering ``query-status`` with
``internal-error`` once ``<path>.broken`` exists, as QEMU does for a guest that met a
broken KVM. It ends when its QEMU (pid from the pid file) is gone.

Usage: python qmp_liar.py QMP_PATH PIDFILE
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path


def _lie(line: bytes, broken: Path) -> bytes:
    if not broken.exists():
        return line
    try:
        message = json.loads(line)
    except ValueError:
        return line
    answer = message.get("return") if isinstance(message, dict) else None
    if isinstance(answer, dict) and "status" in answer and "running" in answer:
        answer.update(status="internal-error", running=False)
        return json.dumps(message).encode() + b"\r\n"
    return line


def _relay(client: socket.socket, upstream_path: str, broken: Path) -> None:
    upstream = socket.socket(socket.AF_UNIX)
    try:
        upstream.connect(upstream_path)
    except OSError:
        client.close()
        return

    def down() -> None:
        with upstream.makefile("rb") as lines:
            for line in lines:
                client.sendall(_lie(line, broken))
        client.close()

    threading.Thread(target=down, daemon=True).start()
    try:
        while data := client.recv(65536):
            upstream.sendall(data)
    except OSError:
        pass
    try:  # the reader's file object holds the socket open: shut it down for QEMU to see
        upstream.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    upstream.close()


def main() -> None:
    path, pidfile = sys.argv[1], Path(sys.argv[2])
    broken = Path(path + ".broken")
    pid = int(pidfile.read_text().strip())
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)
    server.settimeout(0.5)
    while Path(f"/proc/{pid}").exists() and os.path.exists(path):
        try:
            client, _ = server.accept()
        except TimeoutError:
            continue
        threading.Thread(target=_relay, args=(client, path + ".real", broken),
                         daemon=True).start()
    time.sleep(0.2)


if __name__ == "__main__":
    main()
