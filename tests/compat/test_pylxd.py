"""pylxd 2.4.2, unchanged, drives corral through the unix socket."""

from __future__ import annotations

import secrets

import pylxd
import pytest

from devtools.harness import DaemonProcess

pytestmark = pytest.mark.real


def test_pylxd_lifecycle(daemon: DaemonProcess) -> None:
    client = pylxd.Client(endpoint=str(daemon.socket))
    name = f"py{secrets.token_hex(3)}"
    assert client.trusted
    assert name not in [c.name for c in client.instances.all()]
    inst = client.instances.create(
        {"name": name, "source": {"type": "image", "alias": "busybox"}}, wait=True)
    try:
        inst.start(wait=True)
        inst.sync()
        assert inst.status == "Running"
        result = inst.execute(["sh", "-c", "echo out; echo err >&2; exit 5"])
        assert result.exit_code == 5
        assert result.stdout == "out\n" and result.stderr == "err\n"
        result = inst.execute(["cat"], stdin_payload="piped\n")
        assert result.exit_code == 0 and result.stdout == "piped\n"
        inst.files.put("/root/x.txt", b"hello from pylxd\n")
        assert inst.files.get("/root/x.txt") == b"hello from pylxd\n"
        inst.snapshots.create("snap0", wait=True)
        assert [s.name for s in inst.snapshots.all()] == ["snap0"]
        inst.config["user.note"] = "set by pylxd"
        inst.save(wait=True)
        assert client.instances.get(name).config["user.note"] == "set by pylxd"
        inst.stop(force=True, wait=True)
        inst.sync()
        assert inst.status == "Stopped"
        assert client.images.all() and client.profiles.all()
        assert client.networks.all() and client.storage_pools.all()
    finally:
        if client.instances.exists(name):
            live = client.instances.get(name)
            if live.status != "Stopped":
                live.stop(force=True, wait=True)
            live.delete(wait=True)
    assert not client.instances.exists(name)
