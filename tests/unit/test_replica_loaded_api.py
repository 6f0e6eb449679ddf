"""A member without a whole replica answers 503 "replica not loaded" (LXD's error
envelope) to every request that reads or writes the state; ``/1.0`` still answers."""

from __future__ import annotations

from pathlib import Path

from tests.unit.served_api import served_api


def test_a_member_without_its_replica_serves_none_of_it(tmp_path: Path) -> None:
    with served_api(tmp_path) as served:
        status, doc = served.api.call("GET", "/1.0/profiles")
        assert status == 200 and doc["metadata"]
        served.store._loaded = False  # as while it fetches its state from the leader
        for method, path in (("GET", "/1.0/profiles"), ("GET", "/1.0/instances"),
                             ("POST", "/1.0/profiles")):
            body = {"name": "p"} if method == "POST" else None
            status, doc = served.api.call(method, path, body)
            assert status == 503, (method, path, status, doc)
            assert doc["type"] == "error" and doc["error_code"] == 503
            assert doc["error"] == "replica not loaded: fetching state from the leader"
        status, doc = served.api.call("GET", "/1.0")
        assert status == 200
        served.store._loaded = True
        assert served.api.call("GET", "/1.0/profiles")[0] == 200
