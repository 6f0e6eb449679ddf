"""Query parameters the API reads, parsed strictly: a malformed one is a 400 naming it,
never a 500 or a silent default (issue 11: ``recursion=-1`` used to pass)."""

from __future__ import annotations

import math

from aiohttp import web

from cluster.api.response import bad_request

RECURSION_LEVELS = ("0", "1", "2")  # what LXD documents: names, objects, objects with state


def _single(request: web.Request, key: str) -> str | None:
    """The one value of ``key``, ``None`` when absent; a 400 when given twice."""
    values = request.query.getall(key, [])
    if len(values) > 1:
        raise bad_request(f"Invalid value for {key!r}: given more than once")
    return values[0] if values else None


def recursion(request: web.Request) -> int:
    """LXD's ``recursion``: absent is 0; 0, 1 or 2 exactly, else a 400. LXD's selective
    form ``2;fields=state.network`` (sent by clients when a server offers it) is read as
    2 with every field."""
    value = _single(request, "recursion")
    if value is None:
        return 0
    level, _, fields = value.partition(";")
    if level not in RECURSION_LEVELS or (fields and not (
            level == "2" and fields.startswith("fields="))):
        raise bad_request(f"Invalid value for 'recursion': {value!r} (must be 0, 1 or 2)")
    return int(level)


def seconds(request: web.Request, key: str) -> float:
    """A duration in seconds, ``-1`` (for ever) when absent or negative; a 400 when it is
    not a finite number."""
    value = _single(request, key)
    if value is None or value == "":
        return -1.0
    try:
        number = float(value)
    except ValueError as exc:
        raise bad_request(f"Invalid value for {key!r}: {value!r} is not a number") from exc
    if not math.isfinite(number):
        raise bad_request(f"Invalid value for {key!r}: {value!r} is not a finite number")
    return max(number, -1.0)
