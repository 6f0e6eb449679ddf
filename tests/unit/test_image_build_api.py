"""``POST /1.0/images`` with a ``build`` source (``cluster/api/handlers/images.py``): the
member builds the image through the node facade, stores it as an upload is stored, and
aliases it; a bad request changes nothing; a stranger never reaches it. Over the real
API app on a unix socket and HTTPS, a real Raft store and the real image store; the
busybox image comes from the host's busybox-static (a fraction of a second)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral_cli.images import build_aliases, build_request
from corral_shared import tls
from tests.unit.served_api import Served, served_api

BUSYBOX = Path("/bin/busybox")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with served_api(tmp_path / "m") as served:
        yield served


def scratch(served: Served) -> list[str]:
    """What is left in the image scratch directory (builds and uploads)."""
    tmp = served.ctx.paths.images / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def build(served: Served, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST the build; for an accepted one, the finished operation."""
    status, doc = served.api.call("POST", "/1.0/images", body)
    if status != 202:
        return status, doc
    assert doc["type"] == "async" and doc["metadata"]["description"] == "Building image"
    return status, served.api.wait(doc["operation"])


BAD_BUILDS = [
    ({"source": {"type": "build", "kind": "debian"}}, "Unknown image kind 'debian'"),
    ({"source": {"type": "build"}}, "Unknown image kind None"),
    ({"source": {"type": "build", "kind": "busybox"}, "aliases": [{"name": "a/b"}]},
     "Invalid alias name 'a/b'"),
    ({"source": {"type": "build", "kind": "busybox"}, "aliases": [{"description": "x"}]},
     "Alias name cannot be empty"),
    ({"source": {"type": "build", "kind": "busybox", "vm": "yes"}}, "source.vm"),
    ({"source": {"type": "url", "url": "https://example.org/i.tar"}}, "'url' is not supported"),
]


@pytest.mark.parametrize(("body", "error"), BAD_BUILDS, ids=[e for _, e in BAD_BUILDS])
def test_a_bad_build_is_a_400_in_lxds_envelope_and_changes_nothing(
        served: Served, body: dict[str, Any], error: str) -> None:
    before = served.digest()
    status, doc = served.api.call("POST", "/1.0/images", body)
    assert (status, doc["type"], doc["error_code"]) == (400, "error", 400), doc
    assert error in doc["error"], doc
    assert served.digest() == before
    assert scratch(served) == []
    ops = served.api.get("/1.0/operations?recursion=1") or {}
    assert not any(op["description"] == "Building image" for each in ops.values() for op in each)


@pytest.mark.skipif(not BUSYBOX.is_file(), reason="needs busybox-static")
def test_a_build_stores_records_and_aliases_the_image_and_repeats_safely(
        served: Served) -> None:
    body = build_request("busybox", False, False, ["bb", "bb2"], public=True)
    status, op = build(served, body)
    assert (status, op["status"]) == (202, "Success"), op
    fingerprint = op["metadata"]["fingerprint"]
    assert len(fingerprint) == 64 and op["metadata"]["size"] > 0
    assert "build_progress" not in op["metadata"]
    image = served.api.get(f"/1.0/images/{fingerprint}")
    assert image["public"] is True and image["properties"]["os"] == "busybox"
    assert {a["name"] for a in image["aliases"]} == {"bb", "bb2"}
    with served.store.read() as state:
        assert state.images[fingerprint].members == ["m1"]
    # The alias "busybox" points at the seeded tiny image; a build moves it, and a
    # second build of the same kind is the same image (the build is deterministic).
    again = build_request("busybox", False, False, ["busybox"], public=True)
    status, op = build(served, again)
    assert (status, op["status"], op["metadata"]["fingerprint"]) == (202, "Success",
                                                                       fingerprint)
    assert served.api.get("/1.0/images/aliases/busybox")["target"] == fingerprint
    assert served.api.get("/1.0/images/aliases/bb")["target"] == fingerprint
    assert scratch(served) == []
    done = served.api.get("/1.0/operations?recursion=1")["success"]
    assert [op["description"] for op in done].count("Building image") == 2


def test_a_stranger_cannot_build(served: Served, tmp_path: Path) -> None:
    crt, key = tmp_path / "mallory.crt", tmp_path / "mallory.key"
    tls.ensure_pair(crt, key, "mallory", [])
    before = served.digest()
    conn = http.client.HTTPSConnection("127.0.0.1", served.https_port, timeout=30,
                                       context=tls.client_context(crt, key))
    try:
        conn.request("POST", "/1.0/images", json.dumps(build_request(
            "busybox", False, False, ["mine"], public=True)),
            {"Content-Type": "application/json"})
        response = conn.getresponse()
        doc = json.loads(response.read())
    finally:
        conn.close()
    assert (response.status, doc["error_code"]) == (403, 403), doc
    assert served.digest() == before and scratch(served) == []


def test_the_cli_names_each_build_as_before() -> None:
    assert build_aliases("busybox", False, False, None) == ["busybox"]
    assert build_aliases("busybox", True, False, []) == ["busybox-vm"]
    assert build_aliases("busybox", True, True, None) == ["busybox-vm-uefi"]
    assert build_aliases("busybox", False, False, ["a", "b"]) == ["a", "b"]
    assert build_request("busybox", False, True, ["x"], public=False) == {
        "source": {"type": "build", "kind": "busybox", "vm": True, "uefi": True},
        "aliases": [{"name": "x", "description": ""}], "public": False}
