"""LXD's response envelopes and the API's error type.

Handlers return ``sync(...)``, ``empty()`` or ``async_operation(...)``, or raise
``ApiError``; the error middleware is the only place errors become bodies.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from corral_shared.errors import CorralError


class ApiError(CorralError):
    """A refusal to show the client: ``status`` is the HTTP status and LXD's error_code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)

    @property
    def status(self) -> int:
        return self.code


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(message: str = "Not Found") -> ApiError:
    return ApiError(404, message)


SEPARATORS = (",", ":")
DUMP_CHUNK = 100  # list items encoded per json.dumps call


def _dumps(body: Any) -> str:
    """``body`` as compact JSON. A long ``metadata`` list is encoded ``DUMP_CHUNK`` items
    per call: the C encoder holds the GIL for a whole call (241 ms for 10,000 instances),
    and the Raft tick thread that sends the leader's heartbeats needs it meanwhile."""
    metadata = body.get("metadata") if isinstance(body, dict) else None
    if not isinstance(metadata, list) or len(metadata) <= DUMP_CHUNK:
        return json.dumps(body, separators=SEPARATORS)
    head = json.dumps({**body, "metadata": None}, separators=SEPARATORS)
    tail = '"metadata":null}'
    if not head.endswith(tail):  # metadata is not the last key: no cheap splice
        return json.dumps(body, separators=SEPARATORS)
    items = ",".join(json.dumps(metadata[start:start + DUMP_CHUNK], separators=SEPARATORS)[1:-1]
                     for start in range(0, len(metadata), DUMP_CHUNK))
    return f"{head[:-len(tail)]}\"metadata\":[{items}]}}"


def sync(metadata: Any = None, status: int = 200, etag: str | None = None) -> web.Response:
    body = {"type": "sync", "status": "Success", "status_code": 200, "operation": "",
            "error_code": 0, "error": "", "metadata": metadata}
    response = web.json_response(body, status=status, dumps=_dumps)
    if etag:
        response.headers["ETag"] = etag
    return response


def empty() -> web.Response:
    return sync({})


def error(status: int, message: str) -> web.Response:
    body = {"type": "error", "status": "", "status_code": 0, "operation": "",
            "error_code": status, "error": message, "metadata": None}
    return web.json_response(body, status=status, dumps=_dumps)


def async_operation(op: dict[str, Any]) -> web.Response:
    url = f"/1.0/operations/{op['id']}"
    body = {"type": "async", "status": "Operation created", "status_code": 100,
            "operation": url, "error_code": 0, "error": "", "metadata": op}
    return web.json_response(body, status=202, headers={"Location": url}, dumps=_dumps)
