"""LXD's response envelopes and the API's error type.

Handlers return ``sync(...)``, ``empty()`` or ``async_operation(...)``, or raise
``ApiError``; the error middleware is the only place errors become bodies.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

# The error type lives in the shared vocabulary (membership and transport raise it too);
# the API's modules and handlers keep importing it from here.
from corral_shared.errors import ApiError as ApiError
from corral_shared.errors import bad_request as bad_request
from corral_shared.errors import not_found as not_found

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
