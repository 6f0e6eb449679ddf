"""The QEMU driver's pure parts: definition -> VmSpec -> argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent.drivers.base import InstanceDefinition
from node_agent.drivers.qemu import cmdline as cl
from node_agent.drivers.qemu.cmdline import InvalidConfig
from node_agent.drivers.qemu.driver import guest_command

IMAGE = {"kernel": "/img/kernel", "initrd": "/img/initrd", "rootfs": "/img/rootfs.img",
         "cmdline": "console=ttyS0 quiet"}
HOST_MEMORY = 8 << 30


def spec(config: dict[str, str] | None = None,
         devices: dict[str, dict[str, str]] | None = None) -> cl.VmSpec:
    definition = InstanceDefinition("vm1", Path("/img"), config or {}, devices or {})
    return cl.build_spec(definition, Path("/var/lib/vms/vm1"), HOST_MEMORY, IMAGE)


def test_defaults_are_one_gib_and_one_cpu() -> None:
    vm = spec()
    assert (vm.memory, vm.cpus, vm.nics) == (1 << 30, 1, ())
    assert vm.cmdline == "console=ttyS0 quiet" and vm.backing == "/img/rootfs.img"


@pytest.mark.parametrize(("value", "expected"), [("256MiB", 256 << 20), ("1GB", 10**9),
                                                 ("50%", 4 << 30)])
def test_limits_memory_accepts_sizes_and_percentages(value: str, expected: int) -> None:
    assert spec({"limits.memory": value}).memory == expected


@pytest.mark.parametrize("value", ["lots", "1MiB", "0"])
def test_unusable_memory_limits_are_refused(value: str) -> None:
    with pytest.raises(cl.InvalidConfig, match="limits.memory"):
        spec({"limits.memory": value})


@pytest.mark.parametrize(("value", "expected"), [("2", 2), ("0-2,5", 4), ("", 1)])
def test_limits_cpu_is_a_count_or_a_cpuset(value: str, expected: int) -> None:
    assert spec({"limits.cpu": value}).cpus == expected


@pytest.mark.parametrize("value", ["0", "two", "3-1"])
def test_invalid_cpu_limits_are_refused(value: str) -> None:
    with pytest.raises(cl.InvalidConfig, match="limits.cpu"):
        spec({"limits.cpu": value})


def test_bridged_nics_get_stable_macs_and_short_tap_names() -> None:
    devices = {"eth1": {"type": "nic", "network": "corralbr0"},
               "eth0": {"type": "nic", "nictype": "bridged", "parent": "br0",
                        "hwaddr": "00:16:3E:00:00:01"},
               "root": {"type": "disk", "path": "/", "pool": "default"}}
    vm = spec(devices=devices)
    assert [(n.device, n.bridge, n.hwaddr) for n in vm.nics] == [
        ("eth0", "br0", "00:16:3e:00:00:01"), ("eth1", "corralbr0", cl.hwaddr("vm1", "eth1"))]
    assert all(len(n.tap) <= 15 for n in vm.nics)
    assert len({n.tap for n in vm.nics}) == 2
    assert cl.hwaddr("vm1", "eth1") == spec(devices=devices).nics[1].hwaddr
    assert cl.tap_name(Path("/a/vm1"), 0) != cl.tap_name(Path("/b/vm1"), 0)


def test_volatile_hwaddr_is_used() -> None:
    vm = spec({"volatile.eth0.hwaddr": "00:16:3e:aa:bb:cc"},
              {"eth0": {"type": "nic", "network": "br0"}})
    assert vm.nics[0].hwaddr == "00:16:3e:aa:bb:cc"


@pytest.mark.parametrize("dev", [{"type": "nic", "nictype": "macvlan", "parent": "eth0"},
                                 {"type": "nic", "nictype": "bridged"},
                                 {"type": "nic", "parent": "br0"},
                                 {"type": "nic", "network": "br0", "hwaddr": "nope"}])
def test_unsupported_nics_are_refused(dev: dict[str, str]) -> None:
    with pytest.raises(cl.InvalidConfig, match="eth0"):
        spec(devices={"eth0": dev})


def test_invalid_names_are_refused() -> None:
    with pytest.raises(cl.InvalidConfig):
        cl.build_spec(InstanceDefinition("../x", Path("/img")), Path("/x"), HOST_MEMORY, IMAGE)


def test_spec_survives_json() -> None:
    vm = spec({"limits.cpu": "2"}, {"eth0": {"type": "nic", "network": "br0"}})
    assert cl.VmSpec.from_json(vm.to_json()) == vm


def test_argv_daemonises_with_qmp_console_agent_and_taps() -> None:
    vm = spec({"limits.memory": "256MiB", "limits.cpu": "2"},
              {"eth0": {"type": "nic", "network": "br0"}})
    argv = cl.qemu_argv("qemu-system-x86_64", vm, "tcg")
    text = " ".join(argv)
    assert "-daemonize" in argv and "-pidfile" in argv
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-m") + 1] == "262136K" and argv[argv.index("-smp") + 1] == "2"
    assert argv[argv.index("-kernel") + 1] == "/img/kernel"
    assert argv[argv.index("-append") + 1] == "console=ttyS0 quiet"
    assert "unix:/var/lib/vms/vm1/qmp.sock,server=on,wait=off" in argv
    assert "logfile=/var/lib/vms/vm1/console.log" in text
    assert f"name={cl.AGENT_PORT}" in text
    assert f"ifname={vm.nics[0].tap},script=no,downscript=no" in text
    assert f"mac={vm.nics[0].hwaddr}" in text
    assert "file=/var/lib/vms/vm1/root.qcow2,format=qcow2" in text
    assert argv[argv.index("-display") + 1] == "none"


def test_kvm_uses_the_host_cpu_and_the_whole_memory() -> None:
    argv = cl.qemu_argv("qemu", spec({"limits.memory": "256MiB"}), "kvm")
    assert argv[argv.index("-cpu") + 1] == "host"
    assert argv[argv.index("-m") + 1] == "256M"


def test_exec_env_and_cwd_are_applied_in_the_guest() -> None:
    assert guest_command(["ls"], {}, "/") == ["ls"]
    assert guest_command(["ls", "-l"], {"B": "2", "A": "x y"}, "") == \
        ["env", "A=x y", "B=2", "ls", "-l"]
    assert guest_command(["pwd"], {}, "/mnt/root") == \
        ["sh", "-c", 'cd "$1" || exit 1; shift; exec "$@"', "sh", "/mnt/root", "pwd"]
    with pytest.raises(InvalidConfig):
        guest_command(["ls"], {"A=B": "x"}, "/")


def test_the_disk_is_in_the_volume_the_definition_names_and_the_sockets_stay_apart() -> None:
    volume = Path("/pools/a,b/virtual-machines/vm1")  # a pool's path is the user's choice
    definition = InstanceDefinition("vm1", Path("/img"), volume=volume)
    vm = cl.build_spec(definition, Path("/var/lib/vms/vm1"), HOST_MEMORY, IMAGE)
    text = " ".join(cl.qemu_argv("qemu", vm, "tcg"))
    assert vm.volume == str(volume) and vm.directory == "/var/lib/vms/vm1"
    assert "file=/pools/a,,b/virtual-machines/vm1/root.qcow2,format=qcow2" in text
    assert "unix:/var/lib/vms/vm1/qmp.sock,server=on" in text


def test_a_spec_saved_before_disks_lived_on_pools_still_loads() -> None:
    saved = spec().to_json()
    del saved["volume"]  # a config.json written by an older daemon
    loaded = cl.VmSpec.from_json(saved)
    assert loaded.volume == loaded.directory == "/var/lib/vms/vm1"
    assert "file=/var/lib/vms/vm1/root.qcow2," in " ".join(cl.qemu_argv("qemu", loaded, "tcg"))


UEFI_IMAGE = {"rootfs": "/img/rootfs.img"}  # an LXD VM image: no kernel, initrd, cmdline


def _ovmf(tmp_path: Path) -> tuple[Path, Path]:
    code, template = tmp_path / "CODE,4M.fd", tmp_path / "VARS.fd"
    code.write_bytes(b"c")
    template.write_bytes(b"v")
    return code, template


def test_an_image_without_a_kernel_boots_through_ovmf_with_the_vars_in_the_volume(
        tmp_path: Path) -> None:
    code, template = _ovmf(tmp_path)
    definition = InstanceDefinition("vm1", Path("/img"),
                                    volume=Path("/pool/virtual-machines/vm1"))
    vm = cl.build_spec(definition, Path("/var/lib/vms/vm1"), HOST_MEMORY, UEFI_IMAGE,
                       ovmf=(code, template))
    assert (vm.firmware, vm.ovmf_code, vm.ovmf_vars) == (cl.UEFI_BOOT, str(code),
                                                         str(template))
    assert (vm.kernel, vm.initrd, vm.cmdline) == ("", "", "")
    argv = cl.qemu_argv("qemu", vm, "tcg")
    assert "-kernel" not in argv and "-append" not in argv and "-initrd" not in argv
    drives = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-drive"]
    assert drives[:2] == [
        f"if=pflash,format=raw,unit=0,readonly=on,file={tmp_path}/CODE,,4M.fd",
        "if=pflash,format=raw,unit=1,file=/pool/virtual-machines/vm1/OVMF_VARS.fd"]
    assert "virtio-blk-pci,drive=root,id=root-disk,bootindex=0" in argv
    assert cl.VmSpec.from_json(vm.to_json()) == vm


def test_kernel_boot_is_unchanged_and_the_default_of_old_specs() -> None:
    vm = spec()
    assert vm.firmware == cl.KERNEL_BOOT
    saved = vm.to_json()
    for key in ("firmware", "ovmf_code", "ovmf_vars"):  # a config.json from before UEFI
        del saved[key]
    loaded = cl.VmSpec.from_json(saved)
    assert loaded == vm
    argv = cl.qemu_argv("qemu", loaded, "tcg")
    assert "if=pflash" not in " ".join(argv) and "virtio-blk-pci,drive=root,id=root-disk" in argv


def test_no_kernel_and_no_ovmf_is_a_clear_error(tmp_path: Path) -> None:
    definition = InstanceDefinition("vm1", Path("/img"))
    with pytest.raises(InvalidConfig, match="apt-get install ovmf") as caught:
        cl.build_spec(definition, Path("/var/lib/vms/vm1"), HOST_MEMORY, UEFI_IMAGE,
                      ovmf=(tmp_path / "none.fd", tmp_path / "vars.fd"))
    assert caught.value.code == 400
