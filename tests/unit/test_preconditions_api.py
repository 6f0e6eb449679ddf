"""``If-Match`` and PATCH through the served API (a real Raft store): a stale ETag is
LXD's 412 and changes nothing; PATCHes of different keys both stay."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.served_api import Served, served_api


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served_api(tmp_path_factory.mktemp("api")) as served:
        status, doc = served.api.call("POST", "/1.0/instances", {
            "name": "c1", "source": {"type": "image", "alias": "busybox"}})
        assert status == 202, doc
        yield served


def _etag(served: Served, path: str) -> str:
    status, headers, _ = served.api.raw("GET", path)
    assert status == 200
    return headers["ETag"]


def _send(served: Served, method: str, path: str, body: Any,
          etag: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"If-Match": f'"{etag}"'} if etag else {}
    return served.api.call(method, path, body, headers)


def test_a_stale_if_match_on_a_profile_is_lxds_412_and_changes_nothing(
        served: Served) -> None:
    assert _send(served, "POST", "/1.0/profiles", {"name": "p1",
                                                    "config": {"user.a": "1"}})[0] == 200
    old = _etag(served, "/1.0/profiles/p1")
    assert _send(served, "PATCH", "/1.0/profiles/p1", {"config": {"user.b": "2"}}, old)[0] == 200
    new = _etag(served, "/1.0/profiles/p1")
    assert new != old
    before = served.digest()
    for method in ("PUT", "PATCH"):
        status, doc = _send(served, method, "/1.0/profiles/p1", {"config": {}}, old)
        assert (status, doc["type"], doc["error_code"]) == (412, "error", 412)
        assert doc["error"].startswith("ETag doesn't match")
    assert served.digest() == before
    assert served.api.get("/1.0/profiles/p1")["config"] == {"user.a": "1", "user.b": "2"}


def test_patches_of_different_profile_keys_both_stay(served: Served) -> None:
    assert _send(served, "POST", "/1.0/profiles", {"name": "p2"})[0] == 200
    for key in ("user.x", "user.y"):
        assert _send(served, "PATCH", "/1.0/profiles/p2", {"config": {key: "1"}})[0] == 200
    assert served.api.get("/1.0/profiles/p2")["config"] == {"user.x": "1", "user.y": "1"}


def test_a_stale_if_match_on_an_instance_is_a_412_and_the_current_one_is_accepted(
        served: Served) -> None:
    etag = _etag(served, "/1.0/instances/c1")
    obj = served.api.get("/1.0/instances/c1")
    body = {key: obj[key] for key in ("config", "devices", "profiles", "description")}
    body["config"] = {**body["config"], "user.put": "1"}
    before = served.digest()
    status, doc = _send(served, "PUT", "/1.0/instances/c1", body, "f" * 64)
    assert (status, doc["error_code"]) == (412, 412) and "ETag" in doc["error"]
    assert served.digest() == before
    status, doc = _send(served, "PUT", "/1.0/instances/c1", body, etag)
    assert status == 202, json.dumps(doc)
    assert served.api.get("/1.0/instances/c1")["config"]["user.put"] == "1"
