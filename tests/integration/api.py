"""A tiny synchronous client of the LXD-shaped API on a unix socket (tests only)."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 120.0) -> None:
        super().__init__("corral", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Api:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def raw(self, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = UnixHTTPConnection(self.socket_path)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        status, _, raw = self.raw(method, path, data, hdrs)
        return status, json.loads(raw)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """Call and, for async answers, wait: returns the metadata; fails on any error."""
        status, doc = self.call(method, path, body)
        assert status < 400, f"{method} {path}: {status} {doc.get('error')}"
        if doc["type"] == "async":
            op = self.wait(doc["operation"])
            assert op["status"] == "Success", f"{method} {path}: {op['err']}"
            return op
        return doc["metadata"]

    def settle(self, method: str, path: str, body: Any = None) -> None:
        """Call and wait for any operation, whatever its outcome (for clean-ups)."""
        status, doc = self.call(method, path, body)
        if doc.get("type") == "async":
            self.wait(doc["operation"])

    def wait(self, op_url: str, timeout: float = 120) -> dict[str, Any]:
        status, doc = self.call("GET", f"{op_url}/wait?timeout={timeout}")
        assert status == 200, doc
        return doc["metadata"]  # type: ignore[no-any-return]

    def get(self, path: str) -> Any:
        return self.ok("GET", path)
