"""Stateful stop and start of real containers (CRIU through lxc-checkpoint), as LXD's
``lxc stop --stateful`` / ``lxc start``: the processes come back where they were."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest

from devtools.harness import DaemonProcess
from node_agent.drivers.lxc_checkpoint import criu_missing
from tests.integration.api import Api
from tests.integration.guest_counter import count, counter_pid, start_counter
from tests.integration.test_instances_api import exec_out

pytestmark = pytest.mark.real

@pytest.fixture(autouse=True)
def _criu() -> None:
    if problem := criu_missing():
        pytest.skip(problem)


def _launch(api: Api, config: dict[str, str]) -> str:
    name = f"sf{secrets.token_hex(3)}"
    api.ok("POST", "/1.0/instances", {"name": name, "source": {"type": "image",
                                                               "alias": "busybox"},
                                      "config": config, "start": True})
    return name


@pytest.fixture
def stateful(api: Api) -> Iterator[str]:
    name = _launch(api, {"migration.stateful": "true"})
    yield name
    api.settle("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})
    api.settle("DELETE", f"/1.0/instances/{name}")


def failure(api: Api, body: dict[str, object], name: str) -> tuple[int, str]:
    """The status and error of a state change that must fail (refused, or its operation
    failed: 0)."""
    status, doc = api.call("PUT", f"/1.0/instances/{name}/state", body)
    if status >= 400:
        return status, str(doc.get("error"))
    op = api.wait(doc["operation"])
    assert op["status"] == "Failure", op
    return 0, str(op["err"])


def _checkpoint_dir(daemon: DaemonProcess, name: str):  # type: ignore[no-untyped-def]
    return daemon.root / "storage-pools" / "default" / "containers" / name / "state"


def test_stateful_stop_and_start_keep_the_processes(api: Api, daemon: DaemonProcess,
                                                    stateful: str) -> None:
    assert exec_out(daemon, stateful, "sh", "-c", "echo kept > /root/f")[0] == 0
    start_counter(daemon, stateful)
    time.sleep(0.5)
    pid = counter_pid(daemon, stateful)
    assert pid.isdigit()
    api.ok("PUT", f"/1.0/instances/{stateful}/state", {"action": "stop", "stateful": True})
    inst = api.get(f"/1.0/instances/{stateful}")
    assert inst["status"] == "Stopped" and inst["stateful"] is True
    rootfs = daemon.root / "storage-pools" / "default" / "containers" / stateful / "rootfs"
    at_checkpoint = int((rootfs / "tmp" / "count").read_text())
    assert (_checkpoint_dir(daemon, stateful) / "inventory.img").is_file()
    time.sleep(0.5)
    assert int((rootfs / "tmp" / "count").read_text()) == at_checkpoint  # nothing runs

    api.ok("PUT", f"/1.0/instances/{stateful}/state", {"action": "start", "stateful": True})
    inst = api.get(f"/1.0/instances/{stateful}")
    assert inst["status"] == "Running" and inst["stateful"] is False
    assert count(daemon, stateful) >= at_checkpoint
    time.sleep(0.5)
    assert count(daemon, stateful) > at_checkpoint  # the same loop counts on
    assert counter_pid(daemon, stateful) == pid  # the same process (pid namespace restored)
    assert exec_out(daemon, stateful, "cat", "/root/f")[1].strip() == "kept"
    assert not _checkpoint_dir(daemon, stateful).exists()


def test_a_plain_start_discards_the_checkpoint(api: Api, daemon: DaemonProcess,
                                               stateful: str) -> None:
    start_counter(daemon, stateful)
    time.sleep(0.3)
    api.ok("PUT", f"/1.0/instances/{stateful}/state", {"action": "stop", "stateful": True})
    api.ok("PUT", f"/1.0/instances/{stateful}/state", {"action": "start"})  # LXD: --stateless
    inst = api.get(f"/1.0/instances/{stateful}")
    assert inst["status"] == "Running" and inst["stateful"] is False
    assert not _checkpoint_dir(daemon, stateful).exists()
    before = count(daemon, stateful)
    time.sleep(0.4)
    assert count(daemon, stateful) == before  # a fresh boot: no counter runs
    assert counter_pid(daemon, stateful) == ""


def test_stateful_requests_that_cannot_work_change_nothing(api: Api,
                                                           daemon: DaemonProcess) -> None:
    name = _launch(api, {})
    try:
        code, error = failure(api, {"action": "stop", "stateful": True}, name)
        assert code == 400 and "migration.stateful=true" in error, error
        assert api.get(f"/1.0/instances/{name}")["status"] == "Running"
        assert failure(api, {"action": "restart", "stateful": True}, name)[0] == 400
        assert failure(api, {"action": "stop", "stateful": "yes"}, name)[0] == 400

        # Set while it runs: its console pty is still there, so CRIU cannot dump it.
        inst = api.get(f"/1.0/instances/{name}")
        api.ok("PUT", f"/1.0/instances/{name}", {
            "config": {**inst["config"], "migration.stateful": "true"},
            "devices": inst["devices"], "profiles": inst["profiles"]})
        code, error = failure(api, {"action": "stop", "stateful": True}, name)
        assert "restart it after setting the key" in error, error
        inst = api.get(f"/1.0/instances/{name}")
        assert inst["status"] == "Running" and inst["stateful"] is False
        assert not _checkpoint_dir(daemon, name).exists()

        api.ok("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})
        code, error = failure(api, {"action": "start", "stateful": True}, name)
        assert code == 400 and "no saved state" in error, error
        assert api.get(f"/1.0/instances/{name}")["status"] == "Stopped"
    finally:
        api.settle("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})
        api.settle("DELETE", f"/1.0/instances/{name}")


def test_the_cli_stops_statefully_and_start_restores(daemon: DaemonProcess,
                                                     stateful: str) -> None:
    start_counter(daemon, stateful)
    time.sleep(0.3)
    pid = counter_pid(daemon, stateful)
    daemon.corral("stop", stateful, "--stateful")
    assert "STOPPED" in daemon.corral("list", stateful).stdout.decode()
    daemon.corral("start", stateful)  # asks for the restore: the instance is stateful
    assert counter_pid(daemon, stateful) == pid
    refused = daemon.corral("start", stateful, "--stateless", check=False)
    assert refused.returncode == 1 and b"only be passed when" in refused.stderr


def test_a_checkpoint_criu_refuses_leaves_the_container_running(api: Api, daemon: DaemonProcess,
                                                               stateful: str) -> None:
    """A process left by exec without its own session is in lxc-attach's session, led
    from outside the container: CRIU refuses to dump it, and nothing changes."""
    daemon.corral("exec", stateful, "--", "sh", "-c",
                  "sleep 1000 </dev/null >/dev/null 2>&1 &")
    code, error = failure(api, {"action": "stop", "stateful": True}, stateful)
    assert code == 0 and "checkpoint failed" in error, error
    inst = api.get(f"/1.0/instances/{stateful}")
    assert inst["status"] == "Running" and inst["stateful"] is False
    assert not _checkpoint_dir(daemon, stateful).exists()
    assert exec_out(daemon, stateful, "true")[0] == 0
