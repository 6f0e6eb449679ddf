"""Pure parts of the LXC driver: sizes, config generation, attach argv and /proc parsers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral_shared.units import _MULTIPLIERS, MAX_BYTES, UnitError, parse_memory_limit, parse_size
from node_agent.drivers.base import InstanceDefinition
from node_agent.drivers.lxc_config import (
    ConfigError,
    HostFacts,
    attach_argv,
    build_config,
    cgroup_limits,
    cpuset_for,
    disk_lines,
    format_cpuset,
    nic_lines,
    parse_cpuset,
    raw_lines,
    render,
)
from node_agent.drivers.lxc_state import (
    ipv4_addresses,
    ipv6_addresses,
    network_state,
    parse_cgroup_mounts,
    parse_net_dev,
    stopped_state,
)
from node_agent.idmap import IdMap

GiB = 1024**3
HYBRID = HostFacts(cpus=(0, 1), memory=4 * GiB,
                   cgroup_v1=frozenset({"cpuset", "cpu", "cpuacct", "memory", "pids", "freezer"}))
UNIFIED = HostFacts(cpus=(0, 1, 2, 3), memory=4 * GiB, cgroup_v1=frozenset())
IDMAP = IdMap(1_000_000, 1_000_000_000, 1_000_000, 1_000_000_000)


def definition(config: dict[str, str] | None = None,
               devices: dict[str, dict[str, str]] | None = None) -> InstanceDefinition:
    return InstanceDefinition("c1", Path("/srv/pool/c1/rootfs"), config or {}, devices or {})


def build(config: dict[str, str] | None = None, devices: dict[str, dict[str, str]] | None = None,
          host: HostFacts = HYBRID) -> list[tuple[str, str]]:
    return build_config(definition(config, devices), lxcpath=Path("/var/lib/corral/containers"),
                        cgroup_prefix="corral-a1", idmap=IDMAP, host=host)


# -- sizes --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("1GiB", GiB), ("256MiB", 256 * 1024**2), ("512MB", 512 * 10**6), ("1073741824", GiB),
    ("10kB", 10_000), ("10KB", 10_000), ("1.5GiB", 3 * GiB // 2), ("2 GiB", 2 * GiB),
    ("0", 0), ("7B", 7),
])
def test_sizes_as_lxd_users_write_them(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "1XB", "-1", "1e5", "nan", "1..2GiB", "1gib",
                                  "1 G i B", "50%", "99999999999EiB"])
def test_garbage_sizes_are_refused(text: str) -> None:
    with pytest.raises(UnitError):
        parse_size(text)


@given(st.integers(0, 2**40), st.sampled_from(sorted(_MULTIPLIERS)))
def test_integer_sizes_multiply_by_their_unit(number: int, unit: str) -> None:
    expected = number * _MULTIPLIERS[unit]
    if expected > MAX_BYTES:
        with pytest.raises(UnitError, match="too large"):
            parse_size(f"{number}{unit}")
    else:
        assert parse_size(f"{number}{unit}") == expected


@given(st.text(max_size=12))
def test_parse_size_raises_only_unit_errors(text: str) -> None:
    try:
        assert parse_size(text) >= 0
    except UnitError:
        pass


def test_memory_percentages_are_of_host_memory() -> None:
    assert parse_memory_limit("50%", 4 * GiB) == 2 * GiB
    assert parse_memory_limit("512MiB", 4 * GiB) == 512 * 1024**2
    for bad in ("0%", "101%", "0", "x%"):
        with pytest.raises(UnitError):
            parse_memory_limit(bad, 4 * GiB)


# -- CPUs and limits ----------------------------------------------------------------------------

def test_cpusets_parse_and_format_in_kernel_notation() -> None:
    assert parse_cpuset("0-2,5") == (0, 1, 2, 5)
    assert format_cpuset([5, 0, 1, 2]) == "0-2,5"
    for bad in ("", "a", "2-1", "1-", ",", "1,,2", "²", "0-٣"):
        with pytest.raises(ConfigError):
            parse_cpuset(bad)


@given(st.sets(st.integers(0, 300), min_size=1))
def test_cpuset_format_round_trips(cpus: set[int]) -> None:
    assert parse_cpuset(format_cpuset(sorted(cpus))) == tuple(sorted(cpus))


@given(st.integers(1, 64), st.sets(st.integers(0, 63), min_size=1))
def test_cpu_count_takes_the_first_host_cpus(count: int, host: set[int]) -> None:
    cpus = parse_cpuset(cpuset_for(str(count), tuple(sorted(host))))
    assert set(cpus) <= host and len(cpus) == min(count, len(host))


def test_cpu_sets_must_name_host_cpus() -> None:
    assert cpuset_for("0,1", (0, 1)) == "0-1"
    assert cpuset_for("1-1", (0, 1)) == "1"
    with pytest.raises(ConfigError, match="lacks"):
        cpuset_for("0-3", (0, 1))
    with pytest.raises(ConfigError):
        cpuset_for("0", (0, 1))


def test_limits_use_v1_keys_on_the_hybrid_host() -> None:
    lines = build({"limits.cpu": "1", "limits.memory": "256MiB", "limits.processes": "100"})
    assert ("lxc.cgroup.cpuset.cpus", "0") in lines
    assert ("lxc.cgroup.memory.limit_in_bytes", str(256 * 1024**2)) in lines
    assert ("lxc.cgroup.pids.max", "100") in lines


def test_limits_use_cgroup2_keys_on_a_unified_host() -> None:
    lines = build({"limits.cpu": "2", "limits.memory": "25%", "limits.processes": "9"},
                  host=UNIFIED)
    assert ("lxc.cgroup2.cpuset.cpus", "0-1") in lines
    assert ("lxc.cgroup2.memory.max", str(GiB)) in lines
    assert ("lxc.cgroup2.pids.max", "9") in lines


def test_reset_lifts_limits_that_were_removed() -> None:
    assert cgroup_limits({}, HYBRID) == []
    assert cgroup_limits({}, HYBRID, reset=True) == [
        ("cpuset.cpus", "0-1"), ("memory.limit_in_bytes", "-1"), ("pids.max", "max")]
    assert ("memory.max", "max") in cgroup_limits({}, UNIFIED, reset=True)


@pytest.mark.parametrize("config", [{"limits.memory": "lots"}, {"limits.processes": "-3"},
                                    {"limits.processes": "0"}, {"limits.cpu": "0"},
                                    {"limits.cpu": "²"}, {"limits.processes": "٣"}])
def test_bad_limits_are_config_errors(config: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        build(config)


# -- the config file ----------------------------------------------------------------------------

def test_unprivileged_container_maps_root_and_includes_userns() -> None:
    lines = build()
    assert lines[:2] == [("lxc.include", "/usr/share/lxc/config/common.conf"),
                         ("lxc.include", "/usr/share/lxc/config/userns.conf")]
    assert ("lxc.idmap", "u 0 1000000 1000000000") in lines
    assert ("lxc.idmap", "g 0 1000000 1000000000") in lines
    assert ("lxc.rootfs.path", "dir:/srv/pool/c1/rootfs") in lines
    assert ("lxc.cgroup.dir", "corral-a1/c1") in lines
    assert ("lxc.console.logfile", "/var/lib/corral/containers/c1/console.log") in lines
    assert ("lxc.log.file", "/var/lib/corral/containers/c1/lxc.log") in lines
    assert ("lxc.mount.auto", "cgroup:rw:force") in lines
    assert ("lxc.net.0.type", "empty") in lines


def test_systemd_images_halt_on_sigrtmin_4_and_others_on_lxcs_default() -> None:
    assert not [k for k, _ in build() if k == "lxc.signal.halt"]
    lines = build_config(definition(), lxcpath=Path("/l"), cgroup_prefix="p", idmap=IDMAP,
                         host=HYBRID, systemd=True)
    assert ("lxc.signal.halt", "SIGRTMIN+4") in lines
    assert ("lxc.hook.post-stop", "") in lines


def test_privileged_container_has_no_idmap() -> None:
    lines = build({"security.privileged": "true", "security.nesting": "1"})
    assert not [v for k, v in lines if k == "lxc.idmap"]
    includes = [v for k, v in lines if k == "lxc.include"]
    assert includes == ["/usr/share/lxc/config/common.conf", "/usr/share/lxc/config/nesting.conf"]


def test_nics_are_veths_on_their_bridge_in_device_order() -> None:
    lines = build({"volatile.eth0.hwaddr": "00:16:3E:AA:BB:CC"}, {
        "root": {"type": "disk", "path": "/", "pool": "default"},
        "eth1": {"type": "nic", "network": "corralbr1", "name": "lan"},
        "eth0": {"type": "nic", "nictype": "bridged", "parent": "corralbr0", "mtu": "1400"},
    })
    net = [line for line in lines if line[0].startswith("lxc.net.")]
    assert net == [
        ("lxc.net.0.type", "veth"), ("lxc.net.0.link", "corralbr0"), ("lxc.net.0.name", "eth0"),
        ("lxc.net.0.flags", "up"), ("lxc.net.0.hwaddr", "00:16:3e:aa:bb:cc"),
        ("lxc.net.0.mtu", "1400"),
        ("lxc.net.1.type", "veth"), ("lxc.net.1.link", "corralbr1"), ("lxc.net.1.name", "lan"),
        ("lxc.net.1.flags", "up"),
    ]


@pytest.mark.parametrize("dev", [
    {"type": "nic", "nictype": "macvlan", "parent": "eth0"},
    {"type": "nic", "nictype": "bridged"},
    {"type": "nic", "parent": "br0"},
    {"type": "nic", "network": "br0\nlxc.init.cmd = /evil"},
    {"type": "nic", "network": "br0", "name": "a-very-long-interface-name"},
    {"type": "nic", "network": "br0", "hwaddr": "zz:zz"},
    {"type": "nic", "network": "br0", "mtu": "9"},
    {"type": "nic", "network": "br0", "mtu": "١٥٠٠"},
    {"type": "unix-char", "path": "/dev/kvm"},
    {"type": "disk", "source": "relative", "path": "/mnt"},
])
def test_unsupported_or_malformed_devices_are_refused(dev: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        build(devices={"d0": dev})


def test_disks_become_bind_mounts() -> None:
    dev = {"type": "disk", "source": "/srv/my data", "path": "/mnt/x", "readonly": "true"}
    assert disk_lines("d", dev, lambda _p: False) == [
        ("lxc.mount.entry", "/srv/my\\040data mnt/x none bind,create=dir,ro 0 0")]
    assert "create=file" in disk_lines("d", dev, lambda _p: True)[0][1]


def test_raw_lxc_lines_are_appended_and_checked() -> None:
    assert raw_lines("# c\n\nlxc.net.0.ipv4.address = 192.0.2.2/24\n") == [
        ("lxc.net.0.ipv4.address", "192.0.2.2/24")]
    assert build({"raw.lxc": "lxc.environment = A=1"})[-1] == ("lxc.environment", "A=1")
    with pytest.raises(ConfigError):
        raw_lines("lxc.environment")
    with pytest.raises(ConfigError):
        raw_lines("evil = 1")


@pytest.mark.parametrize("name", ["", "..", "a/b", "with space", "x" * 64])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError):
        build_config(InstanceDefinition(name, Path("/r")), lxcpath=Path("/l"),
                     cgroup_prefix="p", idmap=IDMAP, host=HYBRID)


@given(st.text(max_size=20), st.text(max_size=20), st.text(max_size=20))
def test_no_value_can_add_a_line_of_its_own(device: str, parent: str, name: str) -> None:
    dev = {"type": "nic", "nictype": "bridged", "parent": parent, "name": name}
    try:
        lines = build(devices={device: dev})
        text = render(lines)
    except ConfigError:
        return
    assert len(text.splitlines()) == len(lines) + 1


def test_nic_lines_for_p2p_have_no_link() -> None:
    assert nic_lines(3, "eth0", {"nictype": "p2p"}, {})[:2] == [
        ("lxc.net.3.type", "veth"), ("lxc.net.3.name", "eth0")]


# -- exec -----------------------------------------------------------------------------------------

def test_attach_argv_clears_env_and_wraps_cwd() -> None:
    argv = attach_argv(Path("/l"), "c1", ["ls", "-l"], {"LANG": "C", "A": "x=y"}, "/tmp x",
                       1000, 1000)
    assert argv[:6] == ["lxc-attach", "-n", "c1", "-P", "/l", "--clear-env"]
    assert "A=x=y" in argv and "LANG=C" in argv and "HOME=/root" not in argv
    assert argv[argv.index("--uid") + 1] == "1000"
    tail = argv[argv.index("--") + 1:]
    assert tail[:2] == ["/bin/sh", "-c"] and tail[3:] == ["sh", "/tmp x", "ls", "-l"]


def test_attach_argv_without_cwd_runs_the_command_directly() -> None:
    argv = attach_argv(Path("/l"), "c1", ["id"], {}, "", 0, 0)
    assert "HOME=/root" in argv and "--uid" not in argv
    assert argv[-2:] == ["--", "id"]
    with pytest.raises(ConfigError):
        attach_argv(Path("/l"), "c1", [], {}, "", 0, 0)
    with pytest.raises(ConfigError):
        attach_argv(Path("/l"), "c1", ["id"], {"A=B": "1"}, "", 0, 0)


# -- /proc and cgroup parsers -------------------------------------------------------------------

MOUNTINFO = """\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.231.7.0/24 2 0 2
        |-- 10.231.7.5
           /32 host LOCAL
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
Local:
  +-- 10.231.7.0/24 2 0 2
     |-- 10.231.7.5
        /32 host LOCAL
"""
ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0107E70A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0007E70A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""
IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000002163efffeaabbcc 02 40 20 c0     eth0
"""
NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       5       1    0    0    0     0          0         0        5       1    0    0    0     0       0          0
  eth0:     200       2    0    0    0     0          0         0       90       1    0    0    0     0       0          0
"""  # noqa: E501


def test_cgroup_mounts_are_found_in_mountinfo() -> None:
    mounts = parse_cgroup_mounts(MOUNTINFO)
    assert mounts.v1 == {"cpu": "/sys/fs/cgroup/cpu", "memory": "/sys/fs/cgroup/memory"}
    assert mounts.v2 == "/sys/fs/cgroup/unified"
    assert "/sys/fs/cgroup/systemd" in mounts.hierarchies
    assert "/sys/fs/cgroup" not in mounts.hierarchies


def test_ipv4_addresses_take_interface_and_prefix_from_connected_routes() -> None:
    assert ipv4_addresses(FIB_TRIE, ROUTE) == {
        "eth0": [{"family": "inet", "address": "10.231.7.5", "netmask": "24",
                  "scope": "global"}],
        "lo": [{"family": "inet", "address": "127.0.0.1", "netmask": "8", "scope": "local"}],
    }


def test_ipv6_addresses_have_lxd_scopes() -> None:
    v6 = ipv6_addresses(IF_INET6)
    assert v6["lo"][0] == {"family": "inet6", "address": "::1", "netmask": "128",
                           "scope": "local"}
    assert v6["eth0"][0]["address"] == "fe80::216:3eff:feaa:bbcc"
    assert v6["eth0"][0]["scope"] == "link"


def test_network_state_has_lxd_shape() -> None:
    from node_agent.drivers.lxc_state import HostSide

    net = network_state(NET_DEV, FIB_TRIE, ROUTE, IF_INET6,
                        {"eth0": HostSide("00:16:3e:aa:bb:cc", "vethX", 1500, "up")})
    assert set(net) == {"lo", "eth0"}
    eth0 = net["eth0"]
    assert eth0["counters"]["bytes_received"] == 200 and eth0["counters"]["packets_sent"] == 1
    assert (eth0["host_name"], eth0["mtu"], eth0["type"]) == ("vethX", 1500, "broadcast")
    assert [a["family"] for a in eth0["addresses"]] == ["inet", "inet6"]
    assert net["lo"]["type"] == "loopback" and net["lo"]["mtu"] == 65536
    assert parse_net_dev("garbage") == {}


def test_stopped_state_matches_lxd() -> None:
    state = stopped_state()
    assert (state["status"], state["status_code"], state["pid"]) == ("Stopped", 102, 0)
    assert state["network"] is None


def test_halt_signal_names_as_liblxc_spells_them() -> None:
    import signal

    from node_agent.drivers.lxc import _signal_number

    assert _signal_number("SIGPWR") == signal.SIGPWR
    assert _signal_number("pwr") == signal.SIGPWR
    assert _signal_number("SIGRTMIN+4") == signal.SIGRTMIN + 4
    assert _signal_number("10") == 10


def test_pending_signals_join_the_thread_and_process_masks() -> None:
    import signal

    from node_agent.drivers.lxc_state import pending_signals

    status = ("Name:\tinit\nSigQ:\t1/7823\nSigPnd:\t0000000000000000\n"
              "ShdPnd:\t0000000020000000\nSigBlk:\t0000000000000000\n")
    mask = pending_signals(status)
    assert mask >> (signal.SIGPWR - 1) & 1  # SIGPWR is 30: bit 29
    assert not mask >> (signal.SIGTERM - 1) & 1
    assert pending_signals("SigPnd:\t0000000000004000\n") == 1 << (signal.SIGTERM - 1)
    assert pending_signals("") == 0


def test_a_stopping_process_shows_its_pending_signal() -> None:
    """The kernel's view: a signal blocked by its receiver stays pending."""
    import signal
    import subprocess
    import sys
    import time

    from node_agent.drivers.lxc_state import signal_pending

    child = subprocess.Popen([sys.executable, "-c", "import signal, sys, time; "
                              "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPWR}); "
                              "print(flush=True); time.sleep(30)"], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"\n"
        assert not signal_pending(child.pid, signal.SIGPWR)
        child.send_signal(signal.SIGPWR)
        deadline = time.monotonic() + 5
        while not signal_pending(child.pid, signal.SIGPWR):
            assert time.monotonic() < deadline
        assert not signal_pending(child.pid, signal.SIGUSR1)
    finally:
        child.kill()
        child.wait()


# -- stateful (CRIU) ------------------------------------------------------------------------------

def test_a_stateful_container_has_no_console_for_criu_to_trip_on() -> None:
    lines = build({"migration.stateful": "true"})
    assert ("lxc.console.path", "none") in lines
    assert not any(key == "lxc.console.logfile" for key, _ in lines)
    plain = build()
    assert not any(key == "lxc.console.path" for key, _ in plain)
    assert any(key == "lxc.console.logfile" for key, _ in plain)


def test_no_apparmor_profile_where_the_kernel_has_no_apparmor() -> None:
    assert ("lxc.apparmor.profile", "unconfined") in build()
    without = HostFacts(cpus=(0, 1), memory=4 * GiB, cgroup_v1=frozenset(), apparmor=False)
    assert not any(key == "lxc.apparmor.profile" for key, _ in build(host=without))
