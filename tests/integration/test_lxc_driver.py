"""The LXC driver against real liblxc: busybox containers, unprivileged and privileged.

Each test has its own lxcpath and cgroup prefix, in a private ``mkdtemp`` under /tmp rather
than ``tmp_path``: pytest resets ``/tmp/pytest-of-root`` to 0700 at every session start, and
an unprivileged container's mapped root must traverse every directory above its rootfs.
No test uses a network device except the one that makes its own bridge (``ctst<hex>``).
Timings are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import os
import pty
import secrets
import select
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral_shared.instance_metrics import FAMILIES, Sample
from node_agent.drivers.base import InstanceDefinition, InvalidState, NotFound
from node_agent.drivers.lxc import PTY_WRAPPER, DriverError, InvalidConfig, LxcDriver
from node_agent.drivers.lxc_metrics import lxd_fstype
from node_agent.idmap import IdMap, ensure_root_idmap

pytestmark = pytest.mark.real
MiB = 1024**2
INITTAB = "::sysinit:/bin/true\n"


@pytest.fixture(autouse=True)
def _needs_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("lxc-start", "lxc-attach", "busybox"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


def make_rootfs(path: Path, owner: int) -> Path:
    """A busybox system: every applet linked, init waits forever (``sysinit`` only)."""
    for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp",
                "root", "run", "var/log"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", path / "bin/busybox")
    applets = subprocess.run(["busybox", "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        link = path / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    (path / "etc/inittab").write_text(INITTAB)
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (path / "etc/group").write_text("root:x:0:\n")
    for dirpath, dirnames, filenames in os.walk(path):
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(entry, owner, owner)
    return path


class Lab:
    """A private lxcpath + cgroup prefix, and the containers defined in it."""

    def __init__(self, base: Path, idmap: IdMap) -> None:
        self.base = base
        self.idmap = idmap
        self.drivers: list[LxcDriver] = []
        self.driver = self.new_driver()

    def new_driver(self) -> LxcDriver:
        """Another "daemon": its own lxcpath and cgroup prefix, torn down with the lab."""
        tag = secrets.token_hex(3)
        self.drivers.append(LxcDriver(self.base / f"lxc-{tag}", self.idmap, f"corral-test-{tag}"))
        return self.drivers[-1]

    def define(self, name: str, config: dict[str, str] | None = None,
               devices: dict[str, dict[str, str]] | None = None,
               driver: LxcDriver | None = None) -> InstanceDefinition:
        config = config or {}
        privileged = config.get("security.privileged") == "true"
        rootfs = self.base / f"rootfs-{secrets.token_hex(3)}"
        make_rootfs(rootfs, 0 if privileged else self.idmap.uid_base)
        definition = InstanceDefinition(name, rootfs, config, devices or {})
        (driver or self.driver).define(definition)
        return definition

    def exec(self, name: str, *command: str, cwd: str = "",
             stdin: str = "", driver: LxcDriver | None = None) -> subprocess.CompletedProcess[str]:
        argv = (driver or self.driver).exec_argv(name, list(command), {}, cwd, 0, 0)
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd="/",
                              start_new_session=True, timeout=30, check=False)


def _teardown(driver: LxcDriver) -> None:
    for name in driver.names():
        try:
            if driver.status(name) != "Stopped":
                driver.stop(name, force=True, timeout=0)
        except Exception:  # noqa: BLE001 - the kill below is the last resort
            subprocess.run(["lxc-stop", "-k", "-n", name, "-P", str(driver.lxcpath)],
                           capture_output=True, timeout=30, check=False)
        driver.delete(name)
    driver.remove_cgroup_prefix()


@pytest.fixture(scope="module")
def idmap() -> IdMap:
    return ensure_root_idmap()


@pytest.fixture
def lab(idmap: IdMap) -> Iterator[Lab]:
    base = Path(tempfile.mkdtemp(prefix="corral-lxc-", dir="/tmp"))
    base.chmod(0o711)
    lab = Lab(base, idmap)
    try:
        yield lab
    finally:
        for driver in lab.drivers:
            _teardown(driver)
        shutil.rmtree(base, ignore_errors=True)


def monitor_pss_kb(init_pid: int) -> tuple[bytes, int]:
    """The ``[lxc monitor]`` (parent of the container's init): its cmdline and PSS."""
    monitor = int(Path(f"/proc/{init_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    rollup = Path(f"/proc/{monitor}/smaps_rollup").read_text().splitlines()
    pss = next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    return Path(f"/proc/{monitor}/cmdline").read_bytes(), pss


def host_uid(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                if x.startswith("Uid:"))
    return int(line.split()[1])


def test_probe_finds_lxc_usable(lab: Lab) -> None:
    info = lab.driver.probe()
    assert (info.name, info.error) == ("lxc", "")
    assert info.version.startswith("5.")


def test_unprivileged_container_runs_as_mapped_root_with_its_limits(lab: Lab) -> None:
    driver = lab.driver
    lab.define("c1", {"limits.cpu": "1", "limits.memory": "256MiB", "limits.processes": "100"})
    started = time.perf_counter()
    driver.start("c1")
    print(f"\nstart (unprivileged): {(time.perf_counter() - started) * 1000:.0f} ms")
    assert driver.status("c1") == "Running"
    state = driver.state("c1")
    assert host_uid(state["pid"]) == lab.idmap.uid_base
    assert lab.exec("c1", "id", "-u").stdout.strip() == "0"
    assert lab.exec("c1", "sh", "-c", "exit 3").returncode == 3
    assert lab.exec("c1", "nproc").stdout.strip() == "1"
    limits = lab.exec("c1", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                      "/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/cpuset/cpuset.cpus")
    assert limits.stdout.split() == [str(256 * MiB), "100", "0"]
    cgroup = Path(f"/proc/{state['pid']}/cgroup").read_text()
    assert f":memory:/{driver.cgroup_prefix}/c1/lxc.payload.c1\n" in cgroup


def test_limits_change_live_and_are_lifted_when_removed(lab: Lab) -> None:
    driver = lab.driver
    lab.define("c1", {"limits.memory": "256MiB", "limits.processes": "100"})
    driver.start("c1")
    driver.apply_limits("c1", {"limits.memory": "128MiB", "limits.cpu": "0-1"})
    files = ["/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/pids/pids.max"]
    values = lab.exec("c1", "cat", *files).stdout.split()
    assert values[0] == str(128 * MiB) and values[1] == "max"
    driver.apply_limits("c1", {})
    assert int(lab.exec("c1", "cat", files[0]).stdout) > 2**62
    with pytest.raises(InvalidConfig):
        driver.apply_limits("c1", {"limits.memory": "lots"})


def test_privileged_container_runs_as_host_root(lab: Lab) -> None:
    lab.define("p1", {"security.privileged": "true", "limits.cpu": "1"})
    lab.driver.start("p1")
    assert host_uid(lab.driver.state("p1")["pid"]) == 0
    assert lab.exec("p1", "id", "-u").stdout.strip() == "0"
    assert lab.exec("p1", "nproc").stdout.strip() == "1"
    assert lab.exec("p1", "false").returncode == 1


def test_exec_passes_stdin_cwd_and_environment(lab: Lab) -> None:
    lab.define("c1")
    lab.driver.start("c1")
    assert lab.exec("c1", "cat", stdin="hello\n").stdout == "hello\n"
    assert lab.exec("c1", "pwd", cwd="/tmp").stdout.strip() == "/tmp"
    assert lab.exec("c1", "true", cwd="/nonexistent").returncode != 0
    env = lab.exec("c1", "env").stdout.splitlines()
    assert "HOME=/root" in env and not any(v.startswith("PYTEST") for v in env)
    with pytest.raises(NotFound):
        lab.driver.exec_argv("nope", ["true"], {}, "", 0, 0)


def read_until(fd: int, marker: bytes, timeout: float = 15) -> bytes:
    output = b""
    deadline = time.monotonic() + timeout
    while marker not in output and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                output += os.read(fd, 4096)
            except OSError:
                break
    return output


def test_exec_works_interactively_on_a_pty(lab: Lab) -> None:
    """lxc-attach needs the pty as its controlling terminal: PTY_WRAPPER gives it one."""
    lab.define("c1")
    lab.driver.start("c1")
    argv = [*PTY_WRAPPER, *lab.driver.exec_argv("c1", ["/bin/sh"], {"TERM": "dumb"}, "", 0, 0)]
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, cwd="/")
    os.close(terminal)
    try:
        assert b"# " in read_until(controller, b"# "), "no shell prompt"
        # setsid did not fork (the child was no group leader): killpg(proc.pid) reaches it
        assert os.getpgid(proc.pid) == proc.pid
        assert "lxc-attac" in Path(f"/proc/{proc.pid}/comm").read_text()  # memfd re-exec
        os.write(controller, b"test -t 0 && echo IS-A-TTY; exit 5\n")
        assert b"IS-A-TTY\r" in read_until(controller, b"IS-A-TTY\r")
        assert proc.wait(timeout=15) == 5
    finally:
        proc.kill()
        os.close(controller)


def test_freeze_and_unfreeze(lab: Lab) -> None:
    driver = lab.driver
    lab.define("c1")
    driver.start("c1")
    driver.freeze("c1")
    assert driver.status("c1") == "Frozen"
    assert driver.state("c1")["status_code"] == 110
    with pytest.raises(InvalidState):
        driver.freeze("c1")
    driver.unfreeze("c1")
    assert driver.status("c1") == "Running"
    with pytest.raises(InvalidState):
        driver.unfreeze("c1")
    driver.freeze("c1")
    driver.stop("c1", force=True, timeout=0)
    assert driver.status("c1") == "Stopped"


def test_graceful_stop_halts_busybox_init_with_the_halt_signal(lab: Lab) -> None:
    driver = lab.driver
    lab.define("c1")
    driver.start("c1")
    started = time.perf_counter()
    driver.stop("c1", force=False, timeout=20)
    took = time.perf_counter() - started
    print(f"\nstop (graceful, busybox init): {took * 1000:.0f} ms")
    assert driver.status("c1") == "Stopped"
    assert took < 15, "init should halt on SIGPWR long before the timeout"
    assert driver.state("c1")["pid"] == 0
    with pytest.raises(InvalidState):
        driver.stop("c1", force=False, timeout=1)


def test_graceful_stop_waits_for_shutdown_actions_and_term_handlers(lab: Lab) -> None:
    """busybox init's shutdown is over, and the container stopped, only once init is alone:
    a shutdown action and a process still handling its TERM both get to finish."""
    driver = lab.driver
    definition = lab.define("c1")
    worker = ("{ trap 'sleep 0.5; echo cleaned > /root/worker; exit 0' TERM; "
              "while :; do sleep 0.05; done; }")
    (definition.rootfs / "etc/inittab").write_text(
        f"::sysinit:/bin/sh -c \"{worker} &\"\n"
        "::shutdown:/bin/sh -c 'sleep 0.3; echo ran > /root/shutdown'\n")
    driver.start("c1")
    time.sleep(0.3)  # the worker is up
    started = time.perf_counter()
    driver.stop("c1", force=False, timeout=20)
    print(f"\nstop (graceful, busybox init with work to finish): "
          f"{(time.perf_counter() - started) * 1000:.0f} ms")
    assert driver.status("c1") == "Stopped"
    assert (definition.rootfs / "root/shutdown").read_text() == "ran\n"
    assert (definition.rootfs / "root/worker").read_text() == "cleaned\n"


def test_graceful_stop_falls_back_to_kill_when_init_ignores_it(lab: Lab) -> None:
    driver = lab.driver
    lab.define("c1", {"raw.lxc": "lxc.init.cmd = /bin/sleep 1000"})
    driver.start("c1")
    started = time.perf_counter()
    driver.stop("c1", force=False, timeout=1)
    assert driver.status("c1") == "Stopped"
    assert time.perf_counter() - started < 10


def test_force_stop_and_restart(lab: Lab) -> None:
    driver = lab.driver
    lab.define("c1")
    driver.start("c1")
    with pytest.raises(InvalidState):
        driver.start("c1")
    started = time.perf_counter()
    driver.stop("c1", force=True, timeout=0)
    print(f"\nstop --force: {(time.perf_counter() - started) * 1000:.0f} ms")
    assert driver.status("c1") == "Stopped"
    driver.start("c1")
    assert driver.status("c1") == "Running"
    assert driver.lxc_log_path("c1").with_name("lxc.log.old").exists()


def test_delete_refuses_a_running_container_and_cleans_up_a_stopped_one(lab: Lab) -> None:
    driver = lab.driver
    lab.define("c1")
    driver.start("c1")
    with pytest.raises(InvalidState):
        driver.delete("c1")
    driver.stop("c1", force=True, timeout=0)
    driver.delete("c1")
    assert driver.names() == []
    assert not (driver.lxcpath / "c1").exists()
    assert not Path("/sys/fs/cgroup/memory", driver.cgroup_prefix, "c1").exists()
    with pytest.raises(NotFound):
        driver.status("c1")


def test_rename_moves_a_stopped_container(lab: Lab) -> None:
    driver = lab.driver
    lab.define("old")
    driver.start("old")
    with pytest.raises(InvalidState):
        driver.rename("old", "new")
    driver.stop("old", force=True, timeout=0)
    driver.rename("old", "new")
    assert driver.names() == ["new"]
    with pytest.raises(NotFound):
        driver.status("old")
    driver.start("new")
    assert lab.exec("new", "hostname").stdout.strip() == "new"


def test_same_names_under_two_prefixes_never_share_a_cgroup(lab: Lab) -> None:
    other = lab.new_driver()
    lab.define("c1", {"limits.memory": "256MiB"})
    lab.define("c1", {"limits.memory": "128MiB"}, driver=other)
    lab.driver.start("c1")
    other.start("c1")
    assert lab.exec("c1", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                    driver=other).stdout.strip() == str(128 * MiB)
    assert lab.exec("c1", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"
                    ).stdout.strip() == str(256 * MiB)
    other.stop("c1", force=True, timeout=0)
    assert lab.driver.status("c1") == "Running"


def test_start_failure_carries_the_lxc_log(lab: Lab) -> None:
    definition = lab.define("c1")
    os.chown(definition.rootfs, 0, 0)  # the mapped root may no longer write to its rootfs
    definition.rootfs.chmod(0o700)
    with pytest.raises(DriverError, match="lxc.log") as failure:
        lab.driver.start("c1")
    assert "Permission denied" in str(failure.value)
    assert lab.driver.status("c1") == "Stopped"


def test_start_checks_what_lxc_start_reports_badly(lab: Lab) -> None:
    hidden = lab.base / "hidden"
    hidden.mkdir(mode=0o700)
    make_rootfs(hidden / "rootfs", lab.idmap.uid_base)
    lab.driver.define(InstanceDefinition("c1", hidden / "rootfs"))
    with pytest.raises(InvalidConfig, match="traversable"):
        lab.driver.start("c1")
    lab.define("c2", devices={"eth0": {"type": "nic", "network": "ctstnone0"}})
    with pytest.raises(InvalidConfig, match="bridge 'ctstnone0' does not exist"):
        lab.driver.start("c2")
    with pytest.raises(InvalidConfig):
        lab.define("c3", devices={"eth0": {"type": "nic", "nictype": "macvlan"}})
    with pytest.raises(InvalidConfig, match="liblxc rejected"):
        lab.define("c4", {"raw.lxc": "lxc.no.such.key = 1"})
    assert "c4" not in lab.driver.names()


def test_state_reports_network_from_the_containers_namespace(lab: Lab) -> None:
    bridge = f"ctst{secrets.token_hex(2)}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        lab.define("c1", {"volatile.eth0.hwaddr": "00:16:3e:12:34:56",
                          "raw.lxc": "lxc.net.0.ipv4.address = 192.0.2.2/24"},
                   {"eth0": {"type": "nic", "nictype": "bridged", "parent": bridge}})
        lab.driver.start("c1")
        lab.exec("c1", "ping", "-c", "1", "-W", "1", "192.0.2.1")  # some traffic
        eth0 = lab.driver.state("c1")["network"]["eth0"]
        assert {"family": "inet", "address": "192.0.2.2", "netmask": "24",
                "scope": "global"} in eth0["addresses"]
        assert eth0["hwaddr"] == "00:16:3e:12:34:56"
        assert Path("/sys/class/net", eth0["host_name"], "master").resolve().name == bridge
        assert (eth0["mtu"], eth0["state"], eth0["type"]) == (1500, "up", "broadcast")
        assert eth0["counters"]["packets_sent"] >= 1
    finally:
        _teardown(lab.driver)  # before the bridge goes
        subprocess.run(["ip", "link", "del", bridge], check=False)


def test_state_reads_a_running_container_and_its_monitor(lab: Lab) -> None:
    """Figures only (bench/lifecycle.py holds the targets: state and list with 50 running)."""
    driver = lab.driver
    lab.define("c1")
    driver.start("c1")
    state = driver.state("c1")
    assert state["status"] == "Running" and state["processes"] >= 1
    assert state["memory"]["usage"] > 0 and state["cpu"]["usage"] > 0
    assert set(state["network"]) == {"lo"}
    samples = []
    for _ in range(200):
        started = time.perf_counter()
        driver.state("c1")
        samples.append(time.perf_counter() - started)
    median = statistics.median(samples) * 1000
    cmdline, pss = monitor_pss_kb(state["pid"])
    print(f"\nstate(): median {median:.3f} ms; monitor {cmdline!r} PSS {pss} kB")
    assert b"lxc monitor" in cmdline and pss > 0


def test_metrics_of_a_running_container_are_lxds_and_a_stopped_one_has_none(lab: Lab) -> None:
    bridge = f"ctst{secrets.token_hex(2)}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        data = lab.base / "data"
        data.mkdir()
        definition = lab.define(
            "c1", {"limits.memory": "256MiB", "raw.lxc": "lxc.net.0.ipv4.address = 192.0.2.2/24"},
            {"eth0": {"type": "nic", "nictype": "bridged", "parent": bridge},
             "data": {"type": "disk", "source": str(data), "path": "/data"}})
        driver = lab.driver
        driver.start("c1")
        lab.exec("c1", "sh", "-c", "ping -c 1 -W 1 192.0.2.1; i=0; "
                 "while [ $i -lt 20000 ]; do i=$((i+1)); done")  # some traffic and CPU
        started = time.perf_counter()
        samples = driver.metric_samples("c1")
        print(f"\nmetric_samples(): {(time.perf_counter() - started) * 1000:.2f} ms, "
              f"{len(samples)} samples")
        assert all(s.family in FAMILIES for s in samples)
        by_family: dict[str, list[Sample]] = {}
        for sample in samples:
            by_family.setdefault(sample.family, []).append(sample)

        def one(family: str, **labels: str) -> float:
            [match] = [s.value for s in by_family[family] if s.labels == labels]
            return match

        cpu = by_family["lxd_cpu_seconds"]
        assert {s.labels["mode"] for s in cpu} == {"user", "system"}
        assert {tuple(sorted(s.labels)) for s in cpu} == {("cpu", "mode")}
        assert sum(s.value for s in cpu) > 0
        assert one("lxd_cpu_effective_total") == len(driver.host.cpus)
        assert one("lxd_memory_MemTotal_bytes") == 256 * MiB  # the limit
        assert 0 < one("lxd_memory_MemFree_bytes") < 256 * MiB
        assert one("lxd_memory_OOM_kills") == 0
        assert one("lxd_procs_total") >= 1
        assert one("lxd_network_transmit_packets", device="eth0") >= 1
        assert one("lxd_network_receive_bytes", device="lo") >= 0
        fstype = lxd_fstype(subprocess.run(["findmnt", "-no", "FSTYPE", "-T",
                                            str(definition.rootfs)], capture_output=True,
                                           text=True, check=True).stdout.strip())
        root = {"device": "", "fstype": fstype, "mountpoint": "/"}  # a plain dir: no device
        size = one("lxd_filesystem_size_bytes", **root)
        assert 0 < one("lxd_filesystem_avail_bytes", **root) <= size
        assert one("lxd_filesystem_size_bytes", device=str(data), fstype=fstype,
                   mountpoint="/data") == size  # the same filesystem
        driver.stop("c1", force=True, timeout=0)
        assert driver.metric_samples("c1") == []
        with pytest.raises(NotFound):
            driver.metric_samples("nosuch")
    finally:
        _teardown(lab.driver)  # before the bridge goes
        subprocess.run(["ip", "link", "del", bridge], check=False)


def test_fifty_containers_run_side_by_side_on_one_shared_rootfs(lab: Lab) -> None:
    """Figures only (bench/lifecycle.py holds the targets: state and list with 50 running)."""
    driver = lab.driver
    shared = lab.define("c0").rootfs  # busybox init writes nothing: one rootfs serves all
    names = [f"c{i}" for i in range(50)]
    for name in names[1:]:
        driver.define(InstanceDefinition(name, shared))
    started = time.perf_counter()
    for name in names:
        driver.start(name)
    start_ms = (time.perf_counter() - started) * 1000 / len(names)
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        states = [driver.state(name) for name in names]
        rounds.append((time.perf_counter() - started) * 1000)
    assert all(s["status"] == "Running" for s in states)
    pss = [monitor_pss_kb(state["pid"])[1] for state in states]
    print(f"\n50 containers: start {start_ms:.0f} ms each; state() of all 50: median "
          f"{statistics.median(rounds):.1f} ms; monitor PSS mean {statistics.mean(pss):.0f} kB")
    assert len({state["pid"] for state in states}) == len(names) and all(pss)
