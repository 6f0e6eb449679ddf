"""Images made by real LXD import, export and run; bad uploads change nothing."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid
from pathlib import Path

import pytest

from devtools.harness import DaemonProcess
from tests.integration.api import Api

pytestmark = pytest.mark.real
DATA = Path(__file__).resolve().parent.parent / "data"
PUBLISHED = DATA / "lxd-published-busybox.tar.gz"
SPLIT_META = DATA / "lxd-split-busybox.meta.tar.xz"
SPLIT_ROOTFS = DATA / "lxd-split-busybox.rootfs.squashfs"
PUBLISHED_FP = "2cbf1ec4f1ad507ef3ee49e10c6ba0d2be9a0ad9fa3aeda4e8d6d4d093d4069f"
SPLIT_FP = "bb3cb77bf50fafee01752a3b0fa041fc6272889ae13e820523bbe4f7b65e7ff9"


def upload(api: Api, body: bytes, content_type: str = "application/octet-stream",
           headers: dict[str, str] | None = None) -> dict:
    status, _, raw = api.raw("POST", "/1.0/images", body,
                             {"Content-Type": content_type, **(headers or {})})
    doc = json.loads(raw)
    assert status == 202, doc
    return api.wait(doc["operation"])


def multipart(parts: list[tuple[str, Path]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = b""
    for name, path in parts:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                f"filename=\"{path.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                ).encode() + path.read_bytes() + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def launch_and_check(api: Api, daemon: DaemonProcess, fingerprint: str, name: str) -> str:
    api.ok("POST", "/1.0/instances", {"name": name, "start": True,
                                      "source": {"type": "image", "fingerprint": fingerprint}})
    try:
        out = daemon.corral("exec", name, "--", "sh", "-c",
                            "cat /etc/hostname; cat /etc/lxd-marker 2>/dev/null; true")
        return out.stdout.decode()
    finally:
        api.settle("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})
        api.settle("DELETE", f"/1.0/instances/{name}")


def test_image_published_and_exported_by_lxd_imports_and_runs(daemon: DaemonProcess) -> None:
    api = Api(str(daemon.socket))
    op = upload(api, PUBLISHED.read_bytes())
    assert op["status"] == "Success", op["err"]
    assert op["metadata"]["fingerprint"] == PUBLISHED_FP == hashlib.sha256(
        PUBLISHED.read_bytes()).hexdigest()
    image = api.get(f"/1.0/images/{PUBLISHED_FP[:12]}")
    assert image["properties"]["description"] == "busybox published by LXD 5.0.2"
    out = launch_and_check(api, daemon, PUBLISHED_FP, "fromlxd")
    assert out.splitlines()[:2] == ["fromlxd", "made by real LXD"]
    status, headers, body = api.raw("GET", f"/1.0/images/{PUBLISHED_FP}/export")
    assert status == 200 and hashlib.sha256(body).hexdigest() == PUBLISHED_FP
    api.ok("DELETE", f"/1.0/images/{PUBLISHED_FP}")
    assert f"/1.0/images/{PUBLISHED_FP}" not in api.get("/1.0/images")


def test_split_image_exported_by_lxd_imports_and_runs(daemon: DaemonProcess) -> None:
    api = Api(str(daemon.socket))
    body, content_type = multipart([("metadata", SPLIT_META), ("rootfs", SPLIT_ROOTFS)])
    op = upload(api, body, content_type)
    assert op["status"] == "Success", op["err"]
    assert op["metadata"]["fingerprint"] == SPLIT_FP
    out = launch_and_check(api, daemon, SPLIT_FP[:16], "fromsplit")
    assert out.splitlines()[0] == "fromsplit"
    api.ok("DELETE", f"/1.0/images/{SPLIT_FP}")


def test_cli_image_import_alias_export_delete(daemon: DaemonProcess, tmp_path: Path) -> None:
    daemon.corral("image", "import", str(PUBLISHED), "--alias", "pub")
    listing = daemon.corral("image", "list", "--format", "csv").stdout.decode()
    assert "pub," in listing and PUBLISHED_FP[:12] in listing
    daemon.corral("image", "alias", "create", "pub2", PUBLISHED_FP[:12])
    daemon.corral("image", "export", "pub2", str(tmp_path / "out"))
    exported = list(tmp_path.iterdir())
    assert len(exported) == 1
    assert hashlib.sha256(exported[0].read_bytes()).hexdigest() == PUBLISHED_FP
    daemon.corral("image", "alias", "delete", "pub2")
    daemon.corral("image", "delete", "pub")
    assert PUBLISHED_FP[:12] not in daemon.corral("image", "list", "--format",
                                                  "csv").stdout.decode()


def test_garbage_upload_fails_and_stores_nothing(daemon: DaemonProcess) -> None:
    api = Api(str(daemon.socket))
    before = api.get("/1.0/images")
    op = upload(api, b"this is not a tarball" * 100)
    assert op["status"] == "Failure" and op["err"]
    assert api.get("/1.0/images") == before
    leftovers = [p for p in (daemon.root / "images").iterdir()
                 if p.name not in {fp.rsplit("/", 1)[1] for fp in before}
                 and p.name != "tmp" and not p.name.startswith(".")]
    assert leftovers == []


WRONG_FP = "0" * 64


def stored_entries(daemon: DaemonProcess) -> set[str]:
    """Names in the daemon's image directory, upload scratch space included."""
    images = daemon.root / "images"
    return {p.name for p in images.iterdir()} | {
        f"tmp/{p.name}" for p in (images / "tmp").iterdir()}


def exported_fingerprint(api: Api, fingerprint: str) -> str:
    status, _, body = api.raw("GET", f"/1.0/images/{fingerprint}/export")
    assert status == 200, body[:200]
    return hashlib.sha256(body).hexdigest()


def test_wrong_fingerprint_reupload_leaves_the_existing_image_intact(
        daemon: DaemonProcess) -> None:
    api = Api(str(daemon.socket))
    assert upload(api, PUBLISHED.read_bytes())["status"] == "Success"
    try:
        before = stored_entries(daemon)
        op = upload(api, PUBLISHED.read_bytes(), headers={"X-LXD-fingerprint": WRONG_FP})
        assert (op["status"], op["status_code"]) == ("Failure", 400)
        assert "Fingerprint mismatch" in op["err"]
        assert f"/1.0/images/{PUBLISHED_FP}" in api.get("/1.0/images")
        assert exported_fingerprint(api, PUBLISHED_FP) == PUBLISHED_FP
        assert stored_entries(daemon) == before
        out = launch_and_check(api, daemon, PUBLISHED_FP, "afterbadupload")
        assert out.splitlines()[0] == "afterbadupload"
    finally:
        api.settle("DELETE", f"/1.0/images/{PUBLISHED_FP}")


def test_wrong_fingerprint_split_reupload_leaves_the_existing_image_intact(
        daemon: DaemonProcess) -> None:
    api = Api(str(daemon.socket))
    body, content_type = multipart([("metadata", SPLIT_META), ("rootfs", SPLIT_ROOTFS)])
    assert upload(api, body, content_type)["status"] == "Success"
    try:
        op = upload(api, body, content_type, headers={"X-LXD-fingerprint": WRONG_FP})
        assert op["status"] == "Failure" and "Fingerprint mismatch" in op["err"]
        assert f"/1.0/images/{SPLIT_FP}" in api.get("/1.0/images")
        status, headers, _ = api.raw("GET", f"/1.0/images/{SPLIT_FP}/export")
        assert status == 200 and headers["Content-Type"].startswith("multipart/")
    finally:
        api.settle("DELETE", f"/1.0/images/{SPLIT_FP}")


ALIAS_BOMB = b"""architecture: x86_64
creation_date: 1700000000
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
properties:
  description: *f
"""


def tarball_with_metadata(meta: bytes) -> bytes:
    """A unified image of an empty rootfs and the given metadata.yaml."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        info = tarfile.TarInfo("metadata.yaml")
        info.size = len(meta)
        tf.addfile(info, io.BytesIO(meta))
        rootfs = tarfile.TarInfo("rootfs")
        rootfs.type, rootfs.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(rootfs)
    return out.getvalue()


def test_alias_bomb_in_metadata_is_refused_and_stores_nothing(daemon: DaemonProcess) -> None:
    api = Api(str(daemon.socket))
    images, before = api.get("/1.0/images"), stored_entries(daemon)
    try:
        op = upload(api, tarball_with_metadata(ALIAS_BOMB))
        assert (op["status"], op["status_code"]) == ("Failure", 400)
        assert "alias" in op["err"] and len(op["err"]) < 1000
        assert api.get("/1.0/images") == images
        assert stored_entries(daemon) == before
    finally:
        for url in set(api.get("/1.0/images")) - set(images):
            api.settle("DELETE", url)
