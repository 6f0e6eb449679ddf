"""The one door every JSON request body goes through: decoded and type-checked against
the route's schema (``cluster.api.schemas``) before a handler looks at it.

Why one layer: handlers used to read ``body.get(...)`` and trust the type, so a list
where LXD has a string, or JSON nested 100,000 deep, ended as a 500 (issue 11).
msgspec decodes straight into the schema, in C, without Python recursion: a value of
the wrong type is refused where it stands, before anything beneath it is read, so a
deep body costs nothing. What the schema does not name is skipped, as LXD ignores
unknown fields; a skipped value nested past the interpreter's recursion limit is
refused as too deep.

Handlers get a plain ``dict`` of the fields that were given, with their types checked.
A field that is absent or ``null`` is left out (Go's decoder leaves a ``null`` field at
its zero value, and LXD clients send ``null`` for empty maps), so "absent means keep"
in PATCH and PUT stays a key test.

Raises ``InvalidBody`` (an ``ApiError``, 400), which the error middleware turns into
LXD's error envelope like every other refusal.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web

from cluster.api.response import ApiError

Body = dict[str, Any]

_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`"
                       r"(?: - at `\$(?P<at>.*)`)?$")
_AT = re.compile(r" - at `\$(?P<at>.*)`$")
_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
          "object": "an object", "array": "a list", "null": "null"}


class InvalidBody(ApiError):
    """A request body that is not JSON, or not of the shape the route takes (400)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


def _field(at: str) -> str:
    """``$.devices[...].type`` as ``devices[*].type``: the field the client got wrong."""
    return at.removeprefix(".").replace("[...]", "[*]") or "body"


def _wanted(types: str) -> str:
    words = [_WORDS.get(t.strip(), t.strip()) for t in types.split("|")]
    words = [w for w in words if w != "null"] or ["null"]
    if set(words) == {"an integer", "a number"}:
        return "a number"
    return " or ".join(words)


def describe(exc: msgspec.ValidationError) -> str:
    """msgspec's message in LXD's plain words, naming the field (``Invalid value for
    'config': must be an object, not a string``)."""
    text = str(exc)
    found = _EXPECTED.match(text)
    if found is None:
        at = _AT.search(text)
        if at is None:
            return f"Invalid request body: {text}"
        return f"Invalid value for {_field(at['at'])!r}: {text[:at.start()]}"
    if found["at"] is None:
        return "The request body must be a JSON object"
    got = _WORDS.get(found["got"], found["got"])
    return f"Invalid value for {_field(found['at'])!r}: must be {_wanted(found['want'])}, not {got}"


def decode(raw: bytes, schema: type[msgspec.Struct]) -> Body:
    """``raw`` as ``schema``, as the fields given (no ``null``s); raises ``InvalidBody``."""
    try:
        value = msgspec.json.decode(raw, type=schema)
    except msgspec.ValidationError as exc:
        raise InvalidBody(describe(exc)) from exc
    except msgspec.DecodeError as exc:
        raise InvalidBody(f"Invalid JSON body: {exc}") from exc
    except RecursionError as exc:  # only in a field the schema skips
        raise InvalidBody("Invalid JSON body: nested too deeply") from exc
    given: Body = msgspec.to_builtins(value)  # schemas omit defaults (None): fields given
    return given


async def json_body(request: web.Request, schema: type[msgspec.Struct]) -> Body:
    """The request's JSON body, checked against ``schema``; ``InvalidBody`` if it is not.
    Bodies over the app's ``client_max_size`` raise aiohttp's 413 as before."""
    return decode(await request.read(), schema)
