"""Virtual machines through the API and CLI: real QEMU, under the accelerator the probe
chose (TCG wherever KVM does not prove itself on a real guest)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from devtools.harness import DaemonProcess
from tests.integration.api import Api

pytestmark = pytest.mark.real


def _exec(daemon: DaemonProcess, name: str, *argv: str) -> str:
    deadline = time.monotonic() + 60
    while True:  # the agent answers once the guest's init has started it
        result = daemon.corral("exec", name, "--", *argv, check=False, timeout=90)
        if result.returncode == 0 or time.monotonic() > deadline:
            assert result.returncode == 0, result.stderr
            return result.stdout.decode()
        time.sleep(1)


async def _console_roundtrip(daemon: DaemonProcess, name: str, send: bytes,
                             expect: str) -> str:
    """Type into the VM's serial console through LXD's console websocket; what came back."""
    connector = aiohttp.UnixConnector(path=str(daemon.socket))
    seen = b""
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(f"http://corral/1.0/instances/{name}/console",
                                json={"type": "console"}) as resp:
            doc = await resp.json()
        op, fds = doc["operation"], doc["metadata"]["metadata"]["fds"]
        async with session.ws_connect(f"http://corral{op}/websocket?secret={fds['0']}") as ws:
            await ws.send_bytes(b"\n" + send)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    async for msg in ws:
                        seen += msg.data if isinstance(msg.data, bytes) else b""
                        if expect.encode() in seen.split(send.strip(), 1)[-1]:
                            break
    return seen.decode(errors="replace").split(send.decode().strip(), 1)[-1]


def _qemu_processes(daemon: DaemonProcess) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if str(daemon.root) in line]


def test_vm_lifecycle_exec_limits_and_bad_input(fresh_daemon: DaemonProcess) -> None:
    daemon, api = fresh_daemon, Api(str(fresh_daemon.socket))
    environment = api.get("/1.0")["environment"]
    assert environment["driver"] == "lxc | qemu"
    daemon.corral("image", "build", "busybox", "--vm", timeout=300)
    daemon.corral("launch", "busybox-vm", "v1", "--vm", "-c", "limits.memory=256MiB",
                  "-c", "limits.cpu=2")
    inst = api.get("/1.0/instances/v1")
    assert inst["type"] == "virtual-machine" and inst["status"] == "Running"
    # The disk is a copy-on-write overlay on the image's, on the default pool, as in LXD;
    # the VM's runtime directory keeps its sockets, specs and log only.
    volume = daemon.root / "storage-pools" / "default" / "virtual-machines" / "v1"
    assert (volume / "root.qcow2").is_file()
    assert not (daemon.root / "vms" / "v1" / "root.qcow2").exists()
    assert (daemon.root / "vms" / "v1" / "qmp.sock").exists()
    environment = api.get("/1.0")["environment"]
    print(f"\nvm_accelerator: {environment['vm_accelerator']} "
          f"({environment['vm_accelerator_reason']})")
    assert environment["vm_accelerator"] in ("kvm", "tcg")
    assert environment["vm_accelerator_reason"]
    if Path("/sys/module/kvm_pvm").exists():  # KVM runs a boot sector, breaks Linux guests
        assert environment["vm_accelerator"] == "tcg"
    assert _exec(daemon, "v1", "uname", "-r").strip().endswith("cloud-amd64")
    meminfo = _exec(daemon, "v1", "cat", "/proc/meminfo")
    total_kb = int(next(line.split()[1] for line in meminfo.splitlines()
                        if line.startswith("MemTotal:")))
    assert 180_000 < total_kb <= 262_144  # 256 MiB less what the kernel keeps
    assert _exec(daemon, "v1", "nproc").strip() == "2"
    # The guest's DHCP client gets an address from the member's dnsmasq, on the bridge's
    # subnet, and the host answers it there.
    subnet = daemon.address.rsplit(".", 1)[0] + "."
    deadline = time.monotonic() + 60
    while subnet not in (inet := _exec(daemon, "v1", "ip", "-4", "-o", "addr", "show", "eth0")):
        assert time.monotonic() < deadline, inet
        time.sleep(1)
    gateway = daemon.address.split("/")[0]
    assert "0% packet loss" in _exec(daemon, "v1", "ping", "-c", "1", "-W", "5", gateway)
    state = api.get("/1.0/instances/v1/state")
    assert state["status"] == "Running" and state["pid"] > 0
    assert len(_qemu_processes(daemon)) == 1
    log = daemon.corral("console", "v1", "--show-log").stdout.decode(errors="replace")
    assert "userspace up" in log  # the guest init's marker on the serial console
    assert "42" in asyncio.run(_console_roundtrip(daemon, "v1", b"echo $((6*7))\n", "42"))

    # Bad input: clear errors, nothing created.
    wrong = daemon.corral("launch", "busybox", "x1", "--vm", check=False)
    assert wrong.returncode == 1 and b"container image" in wrong.stderr
    wrong = daemon.corral("launch", "busybox-vm", "x2", check=False)
    assert wrong.returncode == 1 and b"virtual-machine image" in wrong.stderr
    huge = daemon.corral("launch", "busybox-vm", "x3", "--vm", "-c", "limits.memory=100TiB",
                         check=False)
    assert huge.returncode == 1 and b"No cluster member can take" in huge.stderr
    pty = daemon.corral("exec", "v1", "-t", "--", "sh", check=False)
    assert pty.returncode == 1 and b"not supported" in pty.stderr
    assert sorted(u.rsplit("/", 1)[1] for u in api.get("/1.0/instances")) == ["v1"]

    daemon.corral("stop", "v1", timeout=120)
    assert api.get("/1.0/instances/v1")["status"] == "Stopped"
    assert _qemu_processes(daemon) == []
    status, doc = api.call("POST", "/1.0/instances/v1/console", {"type": "console"})
    assert status == 400 and "not running" in doc["error"]
    daemon.corral("start", "v1")
    assert _exec(daemon, "v1", "echo", "again").strip() == "again"
    daemon.corral("delete", "--force", "v1")
    assert _qemu_processes(daemon) == []
    assert not (daemon.root / "vms" / "v1").exists() and not volume.exists()


def test_core_vm_accelerator_pins_the_member_and_refuses_nonsense(
        fresh_daemon: DaemonProcess) -> None:
    api = Api(str(fresh_daemon.socket))
    api.ok("PATCH", "/1.0", {"config": {"core.vm_accelerator": "tcg"}})
    environment = api.get("/1.0")["environment"]
    assert environment["vm_accelerator"] == "tcg"
    assert environment["vm_accelerator_reason"] == "core.vm_accelerator is tcg"
    status, doc = api.call("PATCH", "/1.0", {"config": {"core.vm_accelerator": "xen"}})
    assert status == 400 and "core.vm_accelerator" in doc["error"]
    assert api.get("/1.0")["config"]["core.vm_accelerator"] == "tcg"
    # A change whose cluster part apply refuses changes nothing, the mode included.
    status, doc = api.call("PATCH", "/1.0", {"config": {"core.vm_accelerator": "auto",
                                                        "cluster.offline_threshold": "soon"}})
    assert status == 400, doc
    assert api.get("/1.0")["environment"]["vm_accelerator_reason"] == "core.vm_accelerator is tcg"
    assert api.get("/1.0")["config"]["core.vm_accelerator"] == "tcg"
    fresh_daemon.stop()
    fresh_daemon.start()
    assert Api(str(fresh_daemon.socket)).get("/1.0")["environment"]["vm_accelerator"] == "tcg"
