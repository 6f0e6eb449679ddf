"""One dnsmasq daemon per managed bridge: DHCP and DNS for its instances.

dnsmasq daemonises itself (its parent reports start-up errors through its exit
status, then exits), so it is re-parented to init and outlives a corral daemon
that is kill -9'd. A later corral finds it again through its pid file, and only
signals a pid whose ``/proc/<pid>/cmdline`` names that same pid file: a
recycled pid is never killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node_agent.network.errors import NetworkCommandError

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class DnsmasqConfig:
    """Everything that shapes one dnsmasq command line (LXD's flags, corral's domain)."""

    bridge: str
    address: str
    dhcp_first: str
    dhcp_last: str
    state_dir: Path
    domain: str = "corral"
    lease_time: str = "1h"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "dnsmasq.pid"

    @property
    def lease_file(self) -> Path:
        return self.state_dir / "dnsmasq.leases"

    @property
    def hosts_file(self) -> Path:
        return self.state_dir / "dnsmasq.hosts"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "dnsmasq.log"

    def argv(self) -> list[str]:
        """The command line; also what a running dnsmasq must show to count as current."""
        return [
            DNSMASQ, "--strict-order", "--bind-interfaces", "--except-interface=lo",
            f"--pid-file={self.pid_file}", "--no-ping", f"--interface={self.bridge}",
            "--dhcp-rapid-commit", "--quiet-dhcp", f"--listen-address={self.address}",
            "--dhcp-no-override", "--dhcp-authoritative",
            f"--dhcp-leasefile={self.lease_file}", f"--dhcp-hostsfile={self.hosts_file}",
            "--dhcp-range", f"{self.dhcp_first},{self.dhcp_last},{self.lease_time}",
            "--conf-file=/dev/null", f"--domain={self.domain}", f"--local=/{self.domain}/",
            f"--interface-name=_gateway.{self.domain},{self.bridge}",
            f"--log-facility={self.log_file}", "--user=nobody", "--group=nogroup",
        ]


class Dnsmasq:
    """Start, find and stop the dnsmasq of one network."""

    def __init__(self, config: DnsmasqConfig) -> None:
        self.config = config

    def running_pid(self) -> int | None:
        """The pid of a live dnsmasq started for this state dir, whatever its other flags."""
        pid = _read_pid(self.config.pid_file)
        if pid is None:
            return None
        argv = _cmdline(pid)
        if not argv or os.path.basename(argv[0]) != "dnsmasq":
            return None
        return pid if f"--pid-file={self.config.pid_file}" in argv else None

    def is_current(self) -> bool:
        """True if our dnsmasq runs with exactly the wanted command line."""
        pid = self.running_pid()
        return pid is not None and _cmdline(pid)[1:] == self.config.argv()[1:]

    def ensure(self) -> None:
        """Leave exactly one current dnsmasq running; restart one with stale flags."""
        if self.is_current():
            return
        self.stop()
        self.start()

    def start(self) -> int:
        """Start dnsmasq; raises NetworkCommandError with its complaint if it refuses."""
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        if not cfg.hosts_file.exists():
            cfg.hosts_file.touch(mode=0o644)
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.run(
                    cfg.argv(), stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                    start_new_session=True, timeout=START_TIMEOUT, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise NetworkCommandError(f"dnsmasq for {cfg.bridge}: {exc}") from exc
            err.seek(0)
            message = err.read().decode(errors="replace").strip()
        if proc.returncode != 0:
            raise NetworkCommandError(f"dnsmasq for {cfg.bridge} failed: {message}")
        pid = self.running_pid()
        if pid is None:
            raise NetworkCommandError(f"dnsmasq for {cfg.bridge} did not stay up: {message}")
        return pid

    def stop(self) -> None:
        """Stop our dnsmasq if it runs (TERM, then KILL); idempotent."""
        pid = self.running_pid()
        if pid is not None:
            _terminate(pid)
        self.config.pid_file.unlink(missing_ok=True)

    def reload(self) -> None:
        """SIGHUP: dnsmasq re-reads the hosts file (static leases)."""
        pid = self.running_pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    def leases(self) -> list[dict[str, Any]]:
        """The current IPv4 leases, as dnsmasq last wrote them."""
        try:
            text = self.config.lease_file.read_text()
        except FileNotFoundError:
            return []
        return parse_leases(text)


def parse_leases(text: str) -> list[dict[str, Any]]:
    """Parse dnsmasq's lease file: ``expiry mac ip hostname client-id`` per line.

    IPv6 lines (the ``duid`` line and what follows it) are skipped: corral's
    bridges are IPv4 only. A hostname of ``*`` means the client sent none.
    """
    leases: list[dict[str, Any]] = []
    for line in text.splitlines():
        fields = line.split()
        if fields[:1] == ["duid"]:
            break
        if len(fields) < 4 or ":" in fields[2]:
            continue
        leases.append({
            "mac": fields[1].lower(),
            "address": fields[2],
            "hostname": "" if fields[3] == "*" else fields[3],
            "expires": int(fields[0]) if fields[0].isdigit() else 0,
        })
    return leases


def _read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


def _alive(pid: int) -> bool:
    """Running and not a zombie (a zombie's cmdline is empty)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _terminate(pid: int) -> None:
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.01)
    raise NetworkCommandError(f"dnsmasq pid {pid} did not exit")
