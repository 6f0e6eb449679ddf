"""Reads through any member see every acknowledged write (LXD clients hop between members),
and a member cut off from its quorum refuses reads (503) instead of serving stale state."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devtools import nemesis
from tests.cluster.conftest import namespace_cluster
from tests.cluster.test_nemesis import _leader, _until
from tests.integration.api import Api

pytestmark = pytest.mark.real


def test_a_write_through_one_member_is_read_through_the_others_at_once() -> None:
    with namespace_cluster(3) as members:
        apis = [Api(str(m.socket)) for m in members]
        for n in range(30):
            writer, readers = apis[n % 3], [a for i, a in enumerate(apis) if i != n % 3]
            writer.ok("POST", "/1.0/profiles", {"name": f"fresh{n}", "description": f"d{n}"})
            for reader in readers:
                status, doc = reader.call("GET", f"/1.0/profiles/fresh{n}")
                assert status == 200 and doc["metadata"]["description"] == f"d{n}", doc

        # A leader cut off from the others refuses reads once it cannot commit a barrier.
        directory: Path = members[0].root.parent
        name = _leader(members[0])
        assert name is not None
        isolated = members[int(name[1:]) - 1]
        nemesis.partition(directory, [name])
        try:
            rest = [Api(str(m.socket)) for m in members if m is not isolated]
            _until(lambda: rest[0].call("POST", "/1.0/profiles",
                                        {"name": "while-cut-off"})[0] < 300,
                   30, "the majority takes writes")
            started = time.monotonic()
            status, doc = Api(str(isolated.socket)).call("GET", "/1.0/profiles/while-cut-off")
            assert status == 503 and "replica is current" in doc["error"], doc
            assert time.monotonic() - started < 10
        finally:
            nemesis.heal(directory)
        _until(lambda: Api(str(isolated.socket)).call(
            "GET", "/1.0/profiles/while-cut-off")[0] == 200, 30, "the healed member reads")
