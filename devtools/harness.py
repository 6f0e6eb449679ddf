"""Start and stop corral daemons for tests, benchmarks and ``make demo``.

Each daemon gets its own ``CORRAL_DIR``, bridge name and subnet, so daemons
never collide with each other or with a demo daemon on the same machine.
With ``netns`` set, the daemon runs inside that network namespace (a "host" of
``devtools.netns``); its unix socket is still a file under ``CORRAL_DIR``, so the
CLI and API helpers work unchanged from the root namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devtools.netns import enter_argv, netns_path
from devtools.teardown import teardown


@dataclass
class DaemonProcess:
    root: Path
    bridge: str
    address: str  # the bridge's own CIDR, e.g. 10.231.7.1/24
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    netns: str | None = None  # run inside /run/netns/<netns> (see devtools.netns)
    # Extra environment of the daemon and its CLI, e.g. the test-only clock offset
    # (``cluster.state.clock.TEST_CLOCK_OFFSET_ENV``) that plays a member with a wrong clock.
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def socket(self) -> Path:
        return self.root / "unix.socket"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.extra_env, "CORRAL_DIR": str(self.root)}

    def corral(self, *args: str, check: bool = True, timeout: float = 120.0,
               input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run([sys.executable, "-m", "corral_cli.main", *args],
                                env=self.env, capture_output=True, timeout=timeout,
                                input=input, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"corral {' '.join(args)} failed ({result.returncode}): "
                                 f"{result.stderr.decode(errors='replace')}")
        return result

    def start(self, timeout: float = 60.0) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the daemon without waiting for it (to start several at once)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)
        log = (self.root / "daemon.stderr").open("ab")
        self.process = subprocess.Popen(
            self.in_netns([sys.executable, "-m", "corral_cli.main", "daemon"]), env=self.env,
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def in_netns(self, argv: list[str]) -> list[str]:
        """``argv`` entered into our namespace, with a sysfs of its own (LXC looks up
        bridges in /sys/class/net); unchanged without ``netns``. Keeps the pid."""
        return argv if self.netns is None else enter_argv(self.netns, argv, private_sysfs=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daemon exited: {self.stderr_tail()}")
            if self.corral("waitready", "--timeout", "1", check=False).returncode == 0:
                return
        raise AssertionError(f"daemon not ready after {timeout}s: {self.stderr_tail()}")

    def init(self) -> None:
        self.corral("init", "--auto", "--bridge-name", self.bridge,
                    "--network-address", self.address)

    def stderr_tail(self, lines: int = 30) -> str:
        try:
            text = (self.root / "daemon.stderr").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def destroy(self) -> None:
        """Stop the daemon and remove every container, bridge and file it made."""
        self.stop()
        if self.netns is not None and Path(netns_path(self.netns)).exists():
            # lxc-stop reaches a container's monitor over an abstract unix socket, which
            # belongs to the network namespace: tear down from inside it.
            subprocess.run(enter_argv(self.netns, [sys.executable, "-m", "devtools.teardown",
                                                   str(self.root)]),
                           capture_output=True, timeout=300, check=False)
        teardown(self.root)
