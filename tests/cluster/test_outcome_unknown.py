"""A write whose outcome cannot be known is answered plainly: a 503 that says so and names
an operation, and that operation later tells the truth (what it reports is what the
replicated state holds)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from cluster.state.raft import SUBMIT_SECONDS
from devtools import nemesis
from tests.cluster.conftest import namespace_cluster
from tests.cluster.test_nemesis import _leader, _until
from tests.integration.api import Api

pytestmark = pytest.mark.real


def test_a_cut_off_member_says_the_outcome_is_unknown_and_its_operation_settles_it() -> None:
    with namespace_cluster(3) as members:
        directory: Path = members[0].root.parent
        leader = _leader(members[0])
        assert leader is not None
        follower = next(m for m in members if m.root.name != leader)
        api = Api(str(follower.socket))
        nemesis.partition(directory, [follower.root.name])
        try:
            started = time.monotonic()
            status, doc = api.call("POST", "/1.0/profiles", {"name": "in-doubt"})
            waited = time.monotonic() - started
            assert status == 503, doc
            assert "outcome is unknown" in doc["error"] and "may still take effect" in doc["error"]
            assert "POST /1.0/profiles" in doc["error"], doc["error"]
            assert SUBMIT_SECONDS - 1 <= waited <= SUBMIT_SECONDS + 10, waited
            found = re.search(r"/1\.0/operations/([0-9a-f-]{36})", doc["error"])
            assert found, doc["error"]
            url = found.group(0)
            status, op = api.call("GET", url)
            assert status == 200 and op["metadata"]["status"] == "Running", op
        finally:
            nemesis.heal(directory)
        settled = api.wait(url, timeout=60)
        everyone = [Api(str(m.socket)) for m in members]
        _until(lambda: all(a.call("GET", "/1.0")[0] == 200 for a in everyone), 30, "all serve")
        present = [a.call("GET", "/1.0/profiles/in-doubt")[0] == 200 for a in everyone]
        assert len(set(present)) == 1, present  # replicas agree on the outcome
        if present[0]:
            assert settled["status"] == "Success", settled
            assert settled["metadata"]["applied"] is True
        else:
            assert settled["status"] == "Failure", settled
            assert "not applied: it is safe to retry" in settled["err"], settled
