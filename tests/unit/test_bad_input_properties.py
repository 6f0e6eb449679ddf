"""Bad input, sent to every route of the route table, is a 4xx and changes nothing
(DESIGN invariant 4; issue 11: 11 of 508 bad requests were 500s).

The real app and a real one-member Raft store (``served_api``): Hypothesis sends each
body route wrong-typed JSON built from the field names LXD clients use, and each GET
route malformed query parameters; every route also gets JSON nested 100,000 deep.
Derandomized, so a run is repeatable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.api.app import route_table
from tests.unit.served_api import MEMBER, Served, served_api

PARAMS = {"name": None, "fp": "IMAGE",  # the fingerprint, known once served
           "fingerprint": "cd" * 32, "id": "no-such-operation",
          "snap": "snap0", "file": "exec-output.log", "mark": "no-such-mark",
          "uid": "no-such-uid"}
NAMES = [("/1.0/instances/", "c1"), ("/1.0/profiles/", "default"),
         ("/1.0/cluster/members/", MEMBER), ("/1.0/images/aliases/", "busybox"),
         ("/1.0/networks/", "corralbr0"), ("/1.0/storage-pools/", "default"),
         ("/internal/instances/", "c1")]
SKIPPED = {"/1.0/events", "/1.0/operations/{id}/websocket"}  # websockets: no body, no query
FIELDS = ["name", "type", "source", "config", "devices", "profiles", "action", "timeout",
          "force", "stateful", "description", "ephemeral", "restore", "migration", "live",
          "command", "environment", "width", "height", "user", "group", "cwd",
          "wait-for-websocket", "record-output", "interactive", "expires_at", "public",
          "properties", "roles", "groups", "mode", "server_name", "secret", "address",
          "capacity", "certificate", "password", "trust_token", "token", "restricted",
          "projects", "incoming", "downtime_ms", "join", "member_name", "target", "alias"]
QUERY_KEYS = ["recursion", "timeout", "filter", "path", "target", "placement", "type",
              "project", "all-projects"]
DEPTH = 100_000


def _path(template: str) -> str:
    def value(match: re.Match[str]) -> str:
        key = match.group(1).split(":")[0]
        if key == "name":
            return next(v for prefix, v in NAMES if template.startswith(prefix))
        return PARAMS[key] or "x"

    return re.sub(r"\{([^}]+)\}", value, template)


ROUTES = [(m, p) for m, p, _, _ in route_table() if p not in SKIPPED and m != "DELETE"]
# A PATCH of an instance waits for the node agent, which these tests do not run: a body
# that passes would hang there, so that route is sent to an instance that does not
# exist (the body is checked first all the same; test_issue_cases covers c1 itself).
BODY_ROUTES = [(m, _path(p).replace("/c1", "/gone") if (m, p) == (
    "PATCH", "/1.0/instances/{name}") else _path(p)) for m, p in ROUTES
    if m in ("POST", "PUT", "PATCH")]
GET_ROUTES = [_path(p) for m, p in ROUTES if m == "GET"]

leaves = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
          | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
bodies = (st.dictionaries(st.sampled_from(FIELDS), values, min_size=1, max_size=4)
          | values.filter(lambda v: not isinstance(v, dict)))
queries = st.lists(st.tuples(st.sampled_from(QUERY_KEYS),
                             st.sampled_from(["-1", "", "3", "x", "1;x", "nan", "inf", "1e999",
                                              "status eq", "/" + "a" * 6000, "\x00"])
                             | st.text(max_size=10)), min_size=1, max_size=3)


def _deep(field: str, opener: bytes, closer: bytes) -> bytes:
    """``{field: [[[...]]]}`` (or the bare nest), built as bytes: json.dumps would recurse."""
    inner = opener * DEPTH + (b"1" if opener.startswith(b"{") else b"") + closer * DEPTH
    return b"{" + json.dumps(field).encode() + b":" + inner + b"}" if field else inner


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served_api(tmp_path_factory.mktemp("api")) as served:
        status, doc = served.api.call("POST", "/1.0/instances", {
            "name": "c1", "source": {"type": "image", "alias": "busybox"}})
        assert status == 202, doc
        yield served


def _send(served: Served, method: str, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
    before = served.digest()
    path = path.replace("IMAGE", served.image)
    status, _, answer = served.api.raw(method, path, raw, {"Content-Type": "application/json"})
    doc = json.loads(answer) if answer.startswith(b"{") else {"error": answer[:200]}
    assert status < 500, f"{method} {path} {raw[:200]!r}: {status} {doc.get('error')!r}"
    if status >= 400:
        assert served.digest() == before, f"{method} {path}: refused but changed the state"
    return status, doc


@pytest.mark.parametrize("method,path", BODY_ROUTES, ids=[f"{m} {p}" for m, p in BODY_ROUTES])
@settings(max_examples=25, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_wrong_typed_bodies_are_refused_and_change_nothing(served: Served, method: str,
                                                           path: str, body: Any) -> None:
    _send(served, method, path, json.dumps(body).encode())


@pytest.mark.parametrize("method,path", BODY_ROUTES, ids=[f"{m} {p}" for m, p in BODY_ROUTES])
def test_json_nested_100000_deep_is_a_400_on_every_body_route(served: Served, method: str,
                                                              path: str) -> None:
    for raw in (_deep("", b"[", b"]"), _deep("config", b'{"a":', b"}"),
                _deep("devices", b"[", b"]"), _deep("unknown", b'{"a":', b"}")):
        status, _ = _send(served, method, path, raw)
        assert 400 <= status < 500


@pytest.mark.parametrize("path", GET_ROUTES)
@settings(max_examples=15, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(query=queries)
def test_malformed_queries_are_refused_and_change_nothing(served: Served, path: str,
                                                          query: list[tuple[str, str]]) -> None:
    before = served.digest()
    path = path.replace("IMAGE", served.image)
    status, _, answer = served.api.raw("GET", f"{path}?{urlencode(query, quote_via=quote)}")
    assert status < 500, f"GET {path}?{query}: {status} {answer[:300]!r}"
    assert served.digest() == before


@pytest.mark.parametrize("method,path,body,message", [
    ("PATCH", "/1.0/instances/c1", {"config": "x"},
     "Invalid value for 'config': must be an object, not a string"),
    ("PATCH", "/1.0/instances/c1", {"devices": "x"},
     "Invalid value for 'devices': must be an object, not a string"),
    ("PATCH", "/1.0/profiles/default", {"devices": [1]},
     "Invalid value for 'devices': must be an object, not a list"),
    ("PUT", "/1.0/instances/c1/state", {"action": ["stop"]},
     "Invalid value for 'action': must be a string, not a list"),
    ("POST", "/1.0/instances", {"name": "c2", "source": {"type": "image", "alias": ["x"]}},
     "Invalid value for 'source.alias': must be a string, not a list"),
    ("POST", "/1.0/instances", {"name": 12345, "source": {"type": "image", "alias": "busybox"}},
     "Invalid value for 'name': must be a string, not an integer"),
])
def test_the_reported_bodies_are_400s_that_name_the_field(served: Served, method: str,
                                                         path: str, body: Any,
                                                         message: str) -> None:
    status, doc = _send(served, method, path, json.dumps(body).encode())
    assert (status, doc["error_code"], doc["error"]) == (400, 400, message)


def test_a_file_path_of_6000_characters_is_a_400(served: Served) -> None:
    status, doc = _send(served, "GET", "/1.0/instances/c1/files?path=/" + "a" * 6000, b"")
    assert (status, doc["error"]) == (400, "File name too long")


@pytest.mark.parametrize("query", ["recursion=-1", "recursion=", "recursion=1&recursion=1",
                                   "recursion=3", "recursion=x"])
def test_recursion_outside_0_1_2_or_repeated_is_a_400(served: Served, query: str) -> None:
    for path in ("/1.0/instances", "/1.0/profiles", "/1.0/images", "/1.0/certificates",
                 "/1.0/instances/c1"):
        status, doc = _send(served, "GET", f"{path}?{query}", b"")
        assert status == 400 and "recursion" in doc["error"], (path, doc)


@pytest.mark.parametrize("query", ["", "?recursion=0", "?recursion=1", "?recursion=2",
                                   "?recursion=2;fields=state.network"])
def test_recursion_0_1_2_still_answers(served: Served, query: str) -> None:
    assert served.api.call("GET", f"/1.0/instances{query}")[0] == 200


def test_server_config_takes_numbers_and_booleans_as_lxd_does(served: Served) -> None:
    status, doc = served.api.call("PATCH", "/1.0", {"config": {"user.count": 5,
                                                               "user.flag": True}})
    assert status == 200, doc
    config = served.api.ok("GET", "/1.0")["config"]
    assert config["user.count"] == "5" and config["user.flag"] == "true"
    status, doc = served.api.call("PATCH", "/1.0", {"config": {"user.nested": {"a": 1}}})
    assert status == 400 and "config" in doc["error"]
