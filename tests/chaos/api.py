"""The chaos clients' HTTP calls to a member's unix socket, and what they were told."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any

from devtools.harness import DaemonProcess
from tests.integration.api import UnixHTTPConnection

REQUEST_TIMEOUT = 8.0


@dataclass
class Answer:
    """A member's answer; ``status`` 0 when there was none (``refused``: nothing sent)."""

    status: int  # 0: no answer
    doc: dict[str, Any]
    etag: str = ""
    refused: bool = False  # the connection was refused: nothing reached the member


def request(member: DaemonProcess, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None, timeout: float = REQUEST_TIMEOUT) -> Answer:
    """One request; never raises for a member that is down or slow (see ``Answer``)."""
    conn = UnixHTTPConnection(str(member.socket), timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        doc = json.loads(raw) if raw.startswith(b"{") else {}
        return Answer(resp.status, doc, resp.getheader("ETag") or "")
    except (ConnectionRefusedError, FileNotFoundError):
        return Answer(0, {"error": "connection refused"}, refused=True)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Answer(0, {"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()
