"""Hosts that share no file system with each other or with this machine, reached over ssh:
the machines of the deployment tests (``tests/deploy``).

::

    root netns   <prefix>br 10.77.N.1/24 (devtools.netns.HostNetwork)
                   +-- netns <prefix>-h1   eth0 10.77.N.2
                         cgroup namespace rooted at <hierarchy>/<prefix>-h1 in every hierarchy
                         mount, UTS, PID namespaces:
                           /      overlay: lower = the cached Debian base
                                           (devtools.debian_base), upper = SCRATCH/h1/upper
                           /proc  of its own PID namespace; /sys of its own network namespace;
                           /sys/fs/cgroup/<h>  its cgroup subtree of each host hierarchy
                           /run   a tmpfs;  /dev  the machine's (bind)
                         PID 1: sshd -D (a generated ed25519 host key; the test's key for root)

``pivot_root`` (not ``chroot``) puts each host on its overlay, and the old root is unmounted,
so nothing of this machine's files is reachable from inside: a deployment has to ship
everything over ssh, as to a real host. The cgroup namespace gives each host a cgroup root
of its own, so LXC on three hosts never shares (or removes) another host's cgroups even
though all three use the same ``CORRAL_DIR``.

Teardown is by pid: killing a host's PID 1 (sshd) makes the kernel kill every process of
its PID namespace (daemon, dnsmasq, LXC monitors, containers in nested PID namespaces); its
mount namespace, with the overlay, goes with the last of them; then its cgroup subtree is
removed, its network namespace deleted and the scratch directory removed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devtools.netns import Host, HostNetwork, NetnsError, kill_pids, netns_path

SSH_TIMEOUT = 30.0  # s until sshd of a new host answers


class SshHostError(RuntimeError):
    """A host could not be made or reached; the message says which and why."""


# ---- pure helpers ----------------------------------------------------------------------

def sshd_config(address: str) -> str:
    """sshd's configuration: root by key only, no PAM (no login session to set up in a
    PID namespace), sftp for Ansible's file transfers."""
    return "\n".join([
        "Port 22",
        f"ListenAddress {address}",
        "HostKey /etc/ssh/ssh_host_ed25519_key",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "PidFile /run/sshd.pid",
        "MaxSessions 50",
        "MaxStartups 100",
        "Subsystem sftp /usr/lib/openssh/sftp-server",
        "",
    ])


def host_files(name: str, address: str, authorized_key: str, host_key: str,
               host_key_pub: str) -> dict[str, tuple[str, int]]:
    """What the overlay's upper layer starts with: path -> (text, mode). /etc/hosts names
    the host (fact gathering resolves it) and an empty resolv.conf makes any other lookup
    fail at once instead of waiting for a name server that is not there."""
    return {
        "etc/hostname": (f"{name}\n", 0o644),
        "etc/hosts": (f"127.0.0.1 localhost\n{address} {name}\n", 0o644),
        "etc/resolv.conf": ("", 0o644),
        "etc/ssh/corral_test_sshd_config": (sshd_config(address), 0o644),
        "etc/ssh/ssh_host_ed25519_key": (host_key, 0o600),
        "etc/ssh/ssh_host_ed25519_key.pub": (host_key_pub, 0o644),
        "root/.ssh/authorized_keys": (authorized_key, 0o600),
    }


# Directories of host_files whose mode in the base must be kept (the upper layer's copy of
# a directory hides the lower one's mode).
DIR_MODES = {"etc": 0o755, "etc/ssh": 0o755, "root": 0o700, "root/.ssh": 0o700}


def cgroup_mounts(mountinfo: str) -> list[str]:
    """Mount points of the cgroup (v1) and cgroup2 hierarchies under /sys/fs/cgroup, from
    ``/proc/self/mountinfo`` text, in order (the first mount of each point)."""
    points: dict[str, None] = {}
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if sep and len(fields) >= 5 and rest and rest[0] in ("cgroup", "cgroup2"):
            point = fields[4].replace("\\040", " ")
            if point == "/sys/fs/cgroup" or point.startswith("/sys/fs/cgroup/"):
                points.setdefault(point)
    return list(points)


# Runs in a shell that is already in the host's cgroups: enters the network namespace and
# new mount, UTS, PID and cgroup namespaces; its child (PID 1 there) mounts the host's
# root, pivots into it and becomes sshd.
INSIDE_SCRIPT = r"""
set -e
base="$1"; upper="$2"; work="$3"; root="$4"; name="$5"; cgsub="$6"; shift 6
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=$base,upperdir=$upper,workdir=$work" "$root"
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount -t tmpfs -o mode=755 cgroup "$root/sys/fs/cgroup"
for point in "$@"; do
    inside="$root/sys/fs/cgroup/${point#/sys/fs/cgroup/}"
    mkdir -p "$inside"
    mount --bind "$point/$cgsub" "$inside"
done
mount -t tmpfs -o mode=755 run "$root/run"
mkdir -p "$root/run/sshd" "$root/run/lock" "$root/.oldroot"
hostname "$name"
cd "$root"
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot
exec /usr/sbin/sshd -D -e -f /etc/ssh/corral_test_sshd_config
"""

# Runs first, in the root namespaces: moves itself into the host's cgroup in every
# hierarchy (the cgroup namespace made next is rooted there), then execs the rest.
ENTER_SCRIPT = r"""
set -e
cgsub="$1"; ncg="$2"; shift 2
i=0
for point in "$@"; do
    [ "$i" -lt "$ncg" ] || break
    echo $$ > "$point/$cgsub/cgroup.procs"
    i=$((i + 1))
done
shift "$ncg"
exec "$@"
"""


def start_argv(netns: str, base: Path, upper: Path, work: Path, root: Path, name: str,
               cgsub: str, cgroups: Sequence[str]) -> list[str]:
    """The command that starts one host; its pid is ``unshare``'s, whose only child is the
    host's PID 1 (``--kill-child``: killing ``unshare`` kills the host)."""
    inside = ["sh", "-c", INSIDE_SCRIPT, "sh", str(base), str(upper), str(work), str(root),
              name, cgsub, *cgroups]
    entered = ["nsenter", f"--net={netns_path(netns)}", "unshare", "--mount", "--uts", "--pid",
               "--cgroup", "--fork", "--kill-child", "--", *inside]
    return ["sh", "-c", ENTER_SCRIPT, "sh", cgsub, str(len(cgroups)), *cgroups, *entered]


# ---- the hosts -------------------------------------------------------------------------

def _run(argv: Sequence[str], timeout: float = 30.0) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        raise SshHostError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def keypair(path: Path, comment: str) -> tuple[str, str]:
    """A new ed25519 key pair at ``path`` (and ``path``.pub): (private, public) text."""
    path.unlink(missing_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.read_text(), path.with_suffix(".pub").read_text()


@dataclass
class SshHost:
    """One host: its network namespace, its directories and the pids that end it."""

    net: Host
    dir: Path
    cgsub: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.net.name

    @property
    def ip(self) -> str:
        return self.net.ip

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    def init_pid(self) -> int | None:
        """The machine's pid of the host's PID 1 (sshd): ``unshare``'s only child."""
        if self.process is None:
            return None
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            pids = [int(p) for p in children.read_text().split()]
        except (OSError, ValueError):
            return None
        return pids[0] if pids else None

    def path(self, inside: str) -> Path:
        """A path of the host's file system as seen from this machine (through its PID 1's
        root): the host's unix sockets and files, read from outside."""
        pid = self.init_pid()
        if pid is None:
            raise SshHostError(f"host {self.name} is not running")
        return Path(f"/proc/{pid}/root") / inside.lstrip("/")

    def enter_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside every namespace of the host, on its root."""
        pid = self.init_pid()
        if pid is None:
            raise SshHostError(f"host {self.name} is not running")
        return ["nsenter", "-t", str(pid), "-m", "-u", "-n", "-p", "-C", "-r", "-w",
                *argv]


class SshHosts:
    """Hosts on one bridge of ``HostNetwork``; every one is removed by ``teardown``."""

    def __init__(self, prefix: str, subnet: str, base: Path, scratch: Path) -> None:
        self.network = HostNetwork(prefix, subnet)
        self.base = base
        self.scratch = scratch
        self.hosts: dict[str, SshHost] = {}
        self.cgroups = cgroup_mounts(Path("/proc/self/mountinfo").read_text())
        if not self.cgroups:
            raise SshHostError("no cgroup hierarchy mounted under /sys/fs/cgroup")
        self.key = scratch / "id_ed25519"
        self.known_hosts = scratch / "known_hosts"

    def create(self) -> None:
        """The bridge, the scratch directory and the key the hosts will trust."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.scratch.chmod(0o700)
        self.network.create()
        keypair(self.key, "corral-test-controller")
        self.known_hosts.write_text("")

    def add(self, name: str) -> SshHost:
        """Start a new host and wait until its sshd answers with the host key we gave it."""
        net = self.network.add_host(name)
        host = SshHost(net, self.scratch / name, f"{self.network.prefix}-{name}")
        self.hosts[name] = host
        for sub in ("upper", "work", "root"):
            (host.dir / sub).mkdir(parents=True, exist_ok=True)
        host_key, host_pub = keypair(self.scratch / f"host_{name}", f"root@{name}")
        authorized = self.key.with_suffix(".pub").read_text()
        for rel, mode in DIR_MODES.items():
            (host.upper / rel).mkdir(parents=True, exist_ok=True)
            (host.upper / rel).chmod(mode)
        for rel, (text, mode) in host_files(name, net.ip, authorized, host_key,
                                            host_pub).items():
            target = host.upper / rel
            target.write_text(text)
            target.chmod(mode)
        for point in self.cgroups:
            cgroup = Path(point) / host.cgsub
            cgroup.mkdir(exist_ok=True)
            _inherit_cpuset(Path(point), cgroup)
        with (host.dir / "sshd.log").open("ab") as log:
            host.process = subprocess.Popen(
                start_argv(net.netns, self.base, host.upper, host.dir / "work",
                           host.dir / "root", name, host.cgsub, self.cgroups),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        net.pids.append(host.process.pid)
        with self.known_hosts.open("a") as known:
            known.write(f"{net.ip} {host_pub.split(' ')[0]} {host_pub.split(' ')[1]}\n")
        self._wait_ssh(host)
        return host

    def ssh_argv(self, host: SshHost, command: str) -> list[str]:
        return ["ssh", *self.ssh_options(), f"root@{host.ip}", command]

    def ssh_options(self) -> list[str]:
        return ["-i", str(self.key), "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=5", "-F", "/dev/null"]

    def _wait_ssh(self, host: SshHost) -> None:
        deadline = time.monotonic() + SSH_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            if host.process is not None and host.process.poll() is not None:
                raise SshHostError(f"host {host.name} exited: {self._log_tail(host)}")
            proc = subprocess.run(self.ssh_argv(host, "hostname"), capture_output=True,
                                  text=True, timeout=15, check=False, stdin=subprocess.DEVNULL)
            if proc.returncode == 0 and proc.stdout.strip() == host.name:
                return
            last = proc.stderr.strip()
            time.sleep(0.2)
        raise SshHostError(f"sshd of {host.name} not answering after {SSH_TIMEOUT:g}s: "
                           f"{last}; {self._log_tail(host)}")

    @staticmethod
    def _log_tail(host: SshHost) -> str:
        try:
            return (host.dir / "sshd.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def stop(self, host: SshHost) -> None:
        """Kill the host's PID 1 (so every process of its PID namespace dies), wait until
        its cgroups are empty and remove them."""
        pid = host.init_pid()
        if pid is not None:
            kill_pids([pid], timeout=0)
        if host.process is not None:
            kill_pids([host.process.pid], timeout=5)
            try:
                host.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for point in self.cgroups:
            _remove_cgroup_tree(Path(point) / host.cgsub)

    def teardown(self) -> list[str]:
        """Every host stopped, the namespaces, veths and bridge removed, the scratch
        directory deleted; idempotent, and every step runs even if one before failed."""
        problems: list[str] = []
        for host in list(self.hosts.values()):
            try:
                self.stop(host)
            except (OSError, SshHostError, NetnsError) as exc:
                problems.append(f"{host.name}: {exc}")
        try:
            self.network.teardown()
        except NetnsError as exc:
            problems.append(str(exc))
        for host in self.hosts.values():
            if _mounted_below(host.dir):
                problems.append(f"{host.dir} still has mounts")
        if not problems:
            shutil.rmtree(self.scratch, ignore_errors=True)
        self.hosts.clear()
        return problems


def _inherit_cpuset(hierarchy: Path, sub: Path) -> None:
    """A v1 cpuset cgroup takes no task before its cpus and mems are set: copy the
    parent's."""
    for knob in ("cpuset.cpus", "cpuset.mems"):
        if (hierarchy / knob).exists() and not (sub / knob).read_text().strip():
            (sub / knob).write_text((hierarchy / knob).read_text())


def _remove_cgroup_tree(top: Path, timeout: float = 15.0) -> None:
    """rmdir ``top`` and everything below it, deepest first, retrying while the dying
    processes still hold them."""
    deadline = time.monotonic() + timeout
    while top.exists():
        dirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: -len(p.parts))
        for d in dirs:
            try:
                d.rmdir()
            except OSError:
                for pid in _cgroup_pids(d):
                    _signal(pid, signal.SIGKILL)
        if not top.exists():
            return
        if time.monotonic() > deadline:
            raise SshHostError(f"cgroup {top} not removable: {_cgroup_pids(top)} still in it")
        time.sleep(0.1)


def _cgroup_pids(cgroup: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _mounted_below(directory: Path) -> bool:
    text = Path("/proc/self/mountinfo").read_text()
    prefix = str(directory.resolve())
    return any(line.split()[4].startswith(prefix) for line in text.splitlines()
               if len(line.split()) > 4)


def describe(hosts: SshHosts) -> str:
    """How to reach each host by hand (for a failing test's message)."""
    return "\n".join(
        f"{h.name}: {' '.join(shlex.quote(a) for a in hosts.ssh_argv(h, ''))}"
        for h in hosts.hosts.values())
