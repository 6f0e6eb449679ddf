"""Images built by the daemon: ``POST /1.0/images`` with a ``build`` source on a real
daemon, and ``corral image build``, which is only that API call."""

from __future__ import annotations

import json

import pytest

from devtools.harness import DaemonProcess
from tests.integration.api import Api

pytestmark = pytest.mark.real


def test_the_daemon_builds_lists_and_aliases_the_image(daemon: DaemonProcess) -> None:
    api = Api(str(daemon.socket))
    status, doc = api.call("POST", "/1.0/images", {
        "source": {"type": "build", "kind": "busybox", "vm": False, "uefi": False},
        "aliases": [{"name": "built-by-api", "description": "from the API"}],
        "public": False})
    assert (status, doc["type"]) == (202, "async"), doc
    try:
        op = api.wait(doc["operation"])
        assert op["status"] == "Success", op["err"]
        fingerprint = op["metadata"]["fingerprint"]
        assert f"/1.0/images/{fingerprint}" in api.get("/1.0/images")
        alias = api.get("/1.0/images/aliases/built-by-api")
        assert (alias["target"], alias["description"]) == (fingerprint, "from the API")
        listed = json.loads(daemon.corral("image", "list", "--format", "json").stdout)
        assert "built-by-api" in [a["name"] for image in listed if image["fingerprint"] ==
                                  fingerprint for a in image["aliases"]], listed
        # The CLI asks the same of the daemon: the same image, its own alias.
        out = daemon.corral("image", "build", "busybox", "--alias", "built-by-cli")
        assert out.stdout.decode().strip() == f"Image imported with fingerprint: {fingerprint}"
        assert "Built built-by-cli" in out.stderr.decode()
        assert api.get("/1.0/images/aliases/built-by-cli")["target"] == fingerprint
    finally:
        for name in ("built-by-api", "built-by-cli"):
            api.settle("DELETE", f"/1.0/images/aliases/{name}")


def test_an_unknown_kind_is_refused_and_adds_no_image(daemon: DaemonProcess) -> None:
    api = Api(str(daemon.socket))
    images, aliases = api.get("/1.0/images"), api.get("/1.0/images/aliases")
    status, doc = api.call("POST", "/1.0/images", {
        "source": {"type": "build", "kind": "centos"}, "aliases": [{"name": "nope"}]})
    assert (status, doc["type"], doc["error_code"]) == (400, "error", 400), doc
    assert "Unknown image kind 'centos'" in doc["error"]
    assert api.get("/1.0/images") == images and api.get("/1.0/images/aliases") == aliases
    failed = daemon.corral("image", "build", "busybox", "--alias", "a/b", check=False)
    assert failed.returncode == 1 and b"Invalid alias name" in failed.stderr
    assert api.get("/1.0/images") == images
