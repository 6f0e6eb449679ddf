"""The daemon as corral.service runs it: sd_notify readiness and the host-shutdown
signal, on a real daemon and real containers.

- With ``NOTIFY_SOCKET`` naming a socket the test binds (an abstract one, ``@...``, as
  systemd may hand out), ``READY=1`` arrives once ``GET /1.0`` answers on the unix
  socket, and ``STOPPING=1`` when SIGTERM stops it.
- SIGPWR (the host shuts down) stops every running container cleanly (a process inside
  that traps SIGTERM gets to write its file) and the daemon exits; the desired state is
  untouched, so a restarted daemon, on the same boot, starts them again.
- SIGTERM leaving containers running is tests/integration/test_daemon_restart.py's.
"""

from __future__ import annotations

import grp
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.sd_notify import NOTIFY_SOCKET_ENV
from devtools.harness import DaemonProcess
from node_agent.host_shutdown import MARKS_FILE, read_marks
from tests.integration.api import Api
from tests.integration.conftest import new_daemon, real_prerequisites

pytestmark = pytest.mark.real


def _until(check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _pid(api: Api, name: str) -> int:
    return int(api.get(f"/1.0/instances/{name}/state")["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def bare_daemon() -> Iterator[DaemonProcess]:
    """A daemon that is not initialised (readiness needs no cluster), destroyed after."""
    problem = real_prerequisites()
    if problem:
        pytest.skip(problem)
    base = Path("/tmp") / f"corral-tests-{secrets.token_hex(3)}"
    base.mkdir(mode=0o711)
    proc = new_daemon(base)
    try:
        yield proc
    finally:
        proc.destroy()
        shutil.rmtree(base, ignore_errors=True)


def _receive(sock: socket.socket, proc: DaemonProcess, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return sock.recv(4096)
        except TimeoutError:
            assert proc.process is not None and proc.process.poll() is None, (
                f"daemon exited: {proc.stderr_tail()}")
            assert time.monotonic() < deadline, f"nothing on the notify socket in {timeout}s"


def test_ready_is_sent_once_the_api_answers_and_stopping_on_sigterm(
        bare_daemon: DaemonProcess) -> None:
    name = f"corral-test-notify-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(0.05)
        bare_daemon.extra_env[NOTIFY_SOCKET_ENV] = "@" + name
        bare_daemon.spawn()
        ready = _receive(sock, bare_daemon, 90)
        status, _, _ = Api(str(bare_daemon.socket)).raw("GET", "/1.0")  # at once: no wait
        assert status == 200
        lines = ready.decode().split("\n")
        assert lines[0] == "READY=1" and lines[1].startswith("STATUS=serving member "), lines
        log = (bare_daemon.root / "corral.log").read_text()
        assert "corral daemon ready" in log  # logged after its own GET /1.0 answered
        info = bare_daemon.socket.stat()
        try:
            group: int | None = grp.getgrnam("corral").gr_gid
        except KeyError:
            group = None
        assert stat.S_IMODE(info.st_mode) == (0o600 if group is None else 0o660)
        assert group is None or info.st_gid == group
        assert bare_daemon.process is not None
        bare_daemon.process.send_signal(signal.SIGTERM)
        stopping = _receive(sock, bare_daemon, 30)
        assert stopping == b"STOPPING=1\nSTATUS=stopping (instances keep running)"
        assert bare_daemon.process.wait(60) == 0
        bare_daemon.process = None


def _clean_stop_witness(proc: DaemonProcess, name: str) -> None:
    """Start a process in ``name`` that writes /bye when it gets SIGTERM (what a clean
    stop sends every process; a kill sends SIGKILL, which no trap sees)."""
    script = "trap 'echo clean > /bye; exit 0' TERM; while :; do sleep 60 & wait $!; done"
    proc.corral("exec", name, "--", "sh", "-c",
                'sh -c "$0" >/dev/null 2>&1 </dev/null &', script)
    _until(lambda: "sleep 60" in proc.corral("exec", name, "--", "ps").stdout.decode(),
           f"the witness in {name} did not start", 30)


def _lxc_state(proc: DaemonProcess, name: str) -> str:
    result = subprocess.run(["lxc-info", "-P", str(proc.root / "containers"), "-n", name,
                             "-sH"], capture_output=True, text=True, timeout=30, check=False)
    return result.stdout.strip()


def test_sigpwr_stops_containers_cleanly_and_a_restart_starts_them_again(
        fresh_daemon: DaemonProcess) -> None:
    api = Api(str(fresh_daemon.socket))
    api.ok("POST", "/1.0/instances", {"name": "pwr1", "source": {"alias": "busybox"},
                                      "start": True})
    api.ok("POST", "/1.0/instances", {"name": "pwr2", "source": {"alias": "busybox"},
                                      "config": {"boot.host_shutdown_timeout": "20"},
                                      "start": True})
    api.ok("POST", "/1.0/instances", {"name": "idle", "source": {"alias": "busybox"}})
    pids = {n: _pid(api, n) for n in ("pwr1", "pwr2")}
    for name in pids:
        _clean_stop_witness(fresh_daemon, name)

    daemon = fresh_daemon.process
    assert daemon is not None
    daemon.send_signal(signal.SIGPWR)
    assert daemon.wait(180) == 0, fresh_daemon.stderr_tail()
    fresh_daemon.process = None

    for name, pid in pids.items():
        assert not _alive(pid), f"{name} still runs"
        assert _lxc_state(fresh_daemon, name) == "STOPPED"
        witness = list(fresh_daemon.root.glob(f"storage-pools/*/containers/{name}/rootfs/bye"))
        assert [p.read_text() for p in witness] == ["clean\n"], f"{name} was not stopped cleanly"
    log = (fresh_daemon.root / "corral.log").read_text()
    assert "host shutdown: 2 instance(s) stopped, 0 failed" in log, log[-3000:]
    assert len(read_marks(fresh_daemon.root / MARKS_FILE)) == 2  # not idle: it was stopped

    fresh_daemon.start()  # the same boot: the marks, not the boot id, start them again

    def status(name: str) -> str:
        return str(api.get(f"/1.0/instances/{name}")["status"])

    _until(lambda: (status("pwr1"), status("pwr2")) == ("Running", "Running"),
           "a restarted daemon did not start what the host shutdown stopped")
    assert all(_pid(api, n) != pid for n, pid in pids.items())
    assert status("idle") == "Stopped"
    _until(lambda: not (fresh_daemon.root / MARKS_FILE).exists(), "the marks stayed", 30)
    for name in ("pwr1", "pwr2"):
        api.ok("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})
    assert (status("pwr1"), status("pwr2")) == ("Stopped", "Stopped")
