"""A Docker engine for the docker-compose test: the machine's own if one answers, else a
private ``dockerd`` that the caller starts and stops.

No engine runs on these machines by default (RECIPES, Docker). The private one keeps to
itself so it cannot disturb the rest of the machine or other tests:

- its own data root (under the test cache, so built images survive between runs), exec
  root, pid file and unix socket; ``DOCKER_HOST`` points the clients at it;
- no default bridge (``docker0``) and no iptables, ip-forward or masquerade changes: Docker's
  ``FORWARD`` policy ``DROP`` would cut the bridges of every other test on this machine
  (``br_netfilter`` is active here). Compose networks take a /24 of 10.96.0.0/16 that no
  route of the machine covers (``default-address-pools``), and need no NAT: the members
  only talk to each other;
- its containers' cgroups live under ``corral-compose-test`` in every hierarchy, removed
  (when empty) after it stops.

One caller at a time holds ``CACHE/docker.lock`` for as long as it uses the engine, so two
test runs never share or stop each other's private engine. A private engine dies with the
run that started it (``PR_SET_PDEATHSIG``: SIGTERM, so it still stops its containers); the
next start removes what such a run left in the data root. One started by hand
(``start`` below) answers, and is used and left running like the machine's own.

    python -m devtools.dockerd start    # prints the DOCKER_HOST of a running private engine
    python -m devtools.dockerd stop
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.debian_base import CACHE
from devtools.netns import host_routes, pick_subnet

RUN = Path("/run/corral-test-docker")
SOCKET = Path("/run/corral-test-docker.sock")
PIDFILE = Path("/run/corral-test-docker.pid")
DATA_ROOT = CACHE / "docker"
CONFIG = CACHE / "docker-daemon.json"
LOG = CACHE / "dockerd.log"
LOCK = CACHE / "docker.lock"
CGROUP_PARENT = "corral-compose-test"
POOL_RANGE = "10.96.0.0/16"
SYSTEM_SOCKET = Path("/var/run/docker.sock")
DOCKER = "/usr/bin/docker"  # Debian's docker.io client (a newer one may sit in /usr/local/bin)
DOCKERD = "/usr/sbin/dockerd"
START_TIMEOUT = 60.0  # s
STOP_TIMEOUT = 60.0  # s
LOCK_TIMEOUT = 1800.0  # s: another run's whole compose test


class DockerError(RuntimeError):
    """No engine could be found or started, or a docker command failed."""


@dataclass(frozen=True)
class Engine:
    """A reachable engine; ``pid`` is set when this process started (or took over) it."""

    host: str
    pid: int | None = None
    config_dir: Path | None = None

    def env(self) -> dict[str, str]:
        """The environment for ``docker`` and ``docker-compose`` against this engine; a
        private client config dir so the user's ``~/.docker`` (credential helpers) is never
        read."""
        env = dict(os.environ, DOCKER_HOST=self.host, DOCKER_BUILDKIT="0",
                   COMPOSE_DOCKER_CLI_BUILD="0")
        if self.config_dir is not None:
            env["DOCKER_CONFIG"] = str(self.config_dir)
        return env

    def docker(self, *args: str, timeout: float = 120.0,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``docker ARGS``; a failure (with ``check``) raises DockerError with stderr."""
        return run([DOCKER, *args], self.env(), timeout=timeout, check=check)


def run(argv: list[str], env: Mapping[str, str], timeout: float = 120.0,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a client command; a failure (with ``check``) or a timeout raises DockerError."""
    try:
        proc = subprocess.run(argv, env=dict(env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DockerError(f"{' '.join(argv)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise DockerError(f"{' '.join(argv)} exited {proc.returncode}: "
                          f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def private_config(pool: str, data_root: Path = DATA_ROOT, exec_root: Path = RUN,
                   socket: Path = SOCKET, pidfile: Path = PIDFILE) -> dict[str, Any]:
    """The private engine's ``daemon.json`` (see the module docstring for each choice)."""
    return {
        "data-root": str(data_root), "exec-root": str(exec_root), "pidfile": str(pidfile),
        "hosts": [f"unix://{socket}"], "bridge": "none", "iptables": False,
        "ip6tables": False, "ip-forward": False, "ip-masq": False,
        "default-address-pools": [{"base": pool, "size": 26}],
        "cgroup-parent": CGROUP_PARENT, "storage-driver": "overlay2",
        "log-driver": "json-file", "userland-proxy": False,
    }


def free_pool(routes: Iterable[str], within: str = POOL_RANGE) -> str:
    """A /24 of ``within`` that no route of the machine overlaps (never probe: RECIPES)."""
    return pick_subnet(routes, None, within)


def answers(host: str, config_dir: Path | None = None, timeout: float = 10.0) -> bool:
    """Whether an engine answers at ``host`` (``docker version`` reaches the server)."""
    if not Path(DOCKER).exists():
        return False
    probe = Engine(host, config_dir=config_dir)
    try:
        return probe.docker("version", "--format", "{{.Server.Version}}", timeout=timeout,
                            check=False).returncode == 0
    except DockerError:
        return False


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the starting thread dies, so a killed test
    run does not leave a private engine behind (it then stops its containers itself)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_private(config_dir: Path | None, die_with_parent: bool = True) -> Engine:
    """Start the private engine and wait until it answers; DockerError if it does not.
    With ``die_with_parent`` it gets SIGTERM when the calling thread dies."""
    if not Path(DOCKERD).exists():
        raise DockerError(f"{DOCKERD} is missing: apt-get install docker.io docker-compose "
                          "(`make test-compose` does)")
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    CONFIG.write_text(json.dumps(private_config(free_pool(host_routes())), indent=2))
    with open(LOG, "wb") as out:  # the last start's log only
        proc = subprocess.Popen([DOCKERD, "--config-file", str(CONFIG)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True,
                                preexec_fn=_die_with_parent if die_with_parent else None)
    engine = Engine(f"unix://{SOCKET}", proc.pid, config_dir)
    deadline = time.monotonic() + START_TIMEOUT
    while not answers(engine.host, config_dir, timeout=5.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_private(engine)
            tail = LOG.read_text(errors="replace")[-2000:] if LOG.exists() else ""
            raise DockerError(f"dockerd did not answer on {SOCKET} within {START_TIMEOUT:g}s:"
                              f"\n{tail}")
        time.sleep(0.2)
    return engine


def _recorded_pid() -> int | None:
    try:
        return int(PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_private_dockerd(pid: int) -> bool:
    """Whether ``pid`` is a dockerd of ours (its command line names our config), so a reused
    pid is never signalled."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].endswith(b"dockerd") and str(CONFIG).encode() in argv


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def clear_private(engine: Engine) -> None:
    """Remove every container, network and volume of the private engine (all of them are
    a test's); images stay, as the build cache."""
    ids = engine.docker("ps", "-aq", check=False).stdout.split()
    if ids:
        engine.docker("rm", "-f", "-v", *ids, timeout=180.0, check=False)
    engine.docker("network", "prune", "-f", check=False)
    engine.docker("volume", "prune", "-f", timeout=180.0, check=False)


def stop_private(engine: Engine) -> None:
    """SIGTERM the private engine by pid (SIGKILL after STOP_TIMEOUT), then remove the
    empty cgroups its containers lived in."""
    pid = engine.pid
    if pid is not None and _is_private_dockerd(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    remove_cgroup_parents()
    with contextlib.suppress(OSError):
        SOCKET.unlink()
    if pid is None or not _alive(pid):
        _remove_exec_root()


def _remove_exec_root(exec_root: Path = RUN) -> None:
    """The exec root (sockets, runtime state) once nothing is mounted below it any more."""
    mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    if not any(m == str(exec_root) or m.startswith(f"{exec_root}/") for m in mounted):
        shutil.rmtree(exec_root, ignore_errors=True)


def remove_cgroup_parents(root: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """rmdir every empty ``corral-compose-test`` cgroup, deepest first; returns those that
    could not be removed (a process still in them)."""
    left = []
    for parent in sorted(root.glob(f"**/{CGROUP_PARENT}"), key=lambda p: -len(p.parts)):
        for sub in sorted((p for p in parent.rglob("*") if p.is_dir()),
                          key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                sub.rmdir()
        try:
            parent.rmdir()
        except OSError:
            left.append(parent)
    return left


@contextlib.contextmanager
def _locked(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DockerError(f"{LOCK} held by another run for {timeout:g}s") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    """An engine that already answers (``DOCKER_HOST``, the private socket, then
    /var/run/docker.sock), used and left as it is; else a private one, started now and
    stopped, with everything in it but the images, at the end (also on failure)."""
    with _locked(), tempfile.TemporaryDirectory(prefix="corral-docker-") as tmp:
        config_dir = Path(tmp)
        for host in (os.environ.get("DOCKER_HOST"), f"unix://{SOCKET}",
                     f"unix://{SYSTEM_SOCKET}"):
            if host and answers(host, config_dir):
                yield Engine(host, None, config_dir)
                return
        private = start_private(config_dir)
        try:
            clear_private(private)  # what a run that died left in the data root
            yield private
        finally:
            try:
                clear_private(private)
            finally:
                stop_private(private)


def main(argv: list[str]) -> int:
    """``start``: a private engine left running (prints its DOCKER_HOST); ``stop``: stop it."""
    if argv[:1] == ["start"]:
        if not answers(f"unix://{SOCKET}"):
            start_private(None, die_with_parent=False)
        print(f"export DOCKER_HOST=unix://{SOCKET}")
        return 0
    if argv[:1] == ["stop"]:
        pid = _recorded_pid()
        stop_private(Engine(f"unix://{SOCKET}", pid))
        return 0
    print("usage: python -m devtools.dockerd start|stop", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
