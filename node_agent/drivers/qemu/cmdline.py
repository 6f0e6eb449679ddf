"""Pure translation: an instance definition -> a :class:`VmSpec` -> QEMU's argv.

Everything a VM needs at start is in its spec (saved as ``<vmpath>/<name>/config.json``),
so a daemon that restarts, or another driver instance, starts the same VM the same way.
The spec names the VM's two directories: ``directory``, the short runtime directory
(sockets, pid file, console log, specs), and ``volume``, where its disk lives (on the
storage pool; the runtime directory itself when the definition names none).

Two boot modes (``VmSpec.firmware``): ``kernel``, direct kernel boot of the image's
``kernel`` and ``initrd`` (corral's own images: no firmware, fastest), and ``uefi``, for
LXD-format images that carry no kernel (their disk has an EFI system partition): OVMF's
code read-only, and a writable copy of its variable store kept with the disk in the VM's
volume (``OVMF_VARS.fd``), so that it moves with the disk, as LXD keeps ``qemu.nvram``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from corral_shared.units import UnitError, parse_memory_limit
from node_agent.drivers.base import DriverError, InstanceDefinition
from node_agent.drivers.lxc_config import ConfigError, parse_cpuset
from node_agent.drivers.qemu.tcg_ram import ram_option

DEFAULT_MEMORY = 1 << 30
DEFAULT_CMDLINE = "console=ttyS0"
AGENT_PORT = "org.corral.agent"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")

# Files of a VM's runtime directory (unix socket paths must stay under 108 bytes) ...
CONFIG = "config.json"
RUNNING_CONFIG = "running.json"
QMP = "qmp.sock"
MIGRATION_QMP = "migration.sock"  # a second monitor, held by a live migration (qmp.Monitor)
AGENT = "agent.sock"
CONSOLE = "console.sock"
CONSOLE_LOG = "console.log"
PIDFILE = "qemu.pid"
QEMU_LOG = "qemu.log"  # QEMU's own messages once daemonised (-D keeps stderr there)
OUTGOING_MARK = "migrating-out"  # an outgoing migration began here (migration/source.py)
INCOMING_MARK = "migrating-in"  # a paused QEMU waits for one (migration/target.py)
ACCEL = "accel"  # the accelerator the running QEMU was started under ("kvm" or "tcg")
# ... and of its volume directory (with snapshots.NAMES).
DISK = "root.qcow2"
VARS = "OVMF_VARS.fd"  # the VM's UEFI variable store (uefi boot only)
# Boot modes, and the firmware of the uefi one (Debian's ovmf package).
KERNEL_BOOT = "kernel"
UEFI_BOOT = "uefi"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# A VM started to receive a live migration: paused, listening only once told where.
INCOMING_ARGS = ("-S", "-incoming", "defer")


class InvalidConfig(DriverError):
    """The instance's config or devices cannot be expressed as a VM."""

    code = 400


@dataclass(frozen=True)
class Nic:
    device: str  # the LXD device name, e.g. eth0
    bridge: str
    tap: str
    hwaddr: str


@dataclass(frozen=True)
class VmSpec:
    name: str
    directory: str
    memory: int  # bytes
    cpus: int
    kernel: str
    initrd: str
    cmdline: str
    backing: str  # the image's rootfs.img behind root.qcow2
    volume: str  # the directory of root.qcow2 and snapshots.json
    nics: tuple[Nic, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)
    # KERNEL_BOOT (a spec saved before UEFI boot existed has none) or UEFI_BOOT, then
    # ``ovmf_code`` is the firmware and ``ovmf_vars`` the template of the VM's VARS copy.
    firmware: str = KERNEL_BOOT
    ovmf_code: str = ""
    ovmf_vars: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VmSpec:
        """The saved spec; one saved before disks lived on storage pools has its disk in
        the VM's directory."""
        values = dict(data)
        values.setdefault("volume", values.get("directory"))
        values["nics"] = tuple(Nic(**nic) for nic in values.get("nics", ()))
        return cls(**values)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidConfig(f"invalid instance name {name!r}")
    return name


def tap_name(directory: Path, index: int) -> str:
    """A host-unique tap name (<= 15 chars) derived from the VM's directory."""
    digest = hashlib.sha256(str(directory).encode()).hexdigest()
    return f"vt{digest[:10]}n{index}"


def hwaddr(name: str, device: str) -> str:
    """A stable MAC in LXD's 00:16:3e range, from the instance and device names."""
    digest = hashlib.sha256(f"{name}/{device}".encode()).digest()
    return "00:16:3e:" + ":".join(f"{b:02x}" for b in digest[:3])


def parse_cpus(value: str) -> int:
    """``limits.cpu``: a count (``"2"``) or a CPU set (``"0-1,3"``: its size)."""
    text = value.strip()
    if not text:
        return 1
    try:
        count = int(text) if text.isdigit() else len(parse_cpuset(text))
    except ConfigError as exc:
        raise InvalidConfig(f"limits.cpu: {exc}") from exc
    if count < 1:
        raise InvalidConfig(f"limits.cpu must be a positive number of CPUs, got {value!r}")
    return count


def parse_memory(value: str, host_memory: int) -> int:
    if not value.strip():
        return DEFAULT_MEMORY
    try:
        memory = parse_memory_limit(value, host_memory)
    except UnitError as exc:
        raise InvalidConfig(f"limits.memory: {exc}") from exc
    if memory < 32 << 20:
        raise InvalidConfig(f"limits.memory {value!r} is below the 32MiB a VM needs")
    return memory


def _nics(definition: InstanceDefinition, directory: Path) -> tuple[Nic, ...]:
    nics: list[Nic] = []
    for device, dev in sorted(definition.devices.items()):
        if dev.get("type") != "nic":
            continue
        nictype = dev.get("nictype", "bridged" if dev.get("network") else "")
        bridge = dev.get("parent") or dev.get("network") or ""
        if nictype != "bridged" or not _BRIDGE_RE.match(bridge):
            raise InvalidConfig(f"device {device!r}: a VM NIC needs nictype=bridged with "
                                f"parent= (or network=) naming a bridge")
        mac = (dev.get("hwaddr") or definition.config.get(f"volatile.{device}.hwaddr")
               or hwaddr(definition.name, device)).lower()
        if not _MAC_RE.match(mac):
            raise InvalidConfig(f"device {device!r}: invalid hwaddr {mac!r}")
        nics.append(Nic(device, bridge, tap_name(directory, len(nics)), mac))
    return tuple(nics)


def ovmf_files(code: Path, template: Path) -> tuple[str, str]:
    """The firmware and VARS template a UEFI boot needs; InvalidConfig if missing."""
    missing = [str(path) for path in (code, template) if not path.is_file()]
    if missing:
        raise InvalidConfig(f"the VM image has no kernel and UEFI firmware is missing "
                            f"({', '.join(missing)}: apt-get install ovmf)")
    return str(code), str(template)


def build_spec(definition: InstanceDefinition, directory: Path, host_memory: int,
               image: Mapping[str, str],
               ovmf: tuple[Path, Path] | None = None) -> VmSpec:
    """The VM's spec, run from ``directory``, its disk in ``definition.volume`` (else in
    ``directory`` too). ``image`` names its ``rootfs`` (rootfs.img), and ``kernel``,
    ``initrd`` and ``cmdline`` for direct kernel boot; without a kernel the VM boots
    through UEFI with ``ovmf`` (code, VARS template; OVMF_CODE and OVMF_VARS by default).
    Raises InvalidConfig."""
    config = definition.config
    firmware, code, template = KERNEL_BOOT, "", ""
    if "kernel" not in image:
        firmware = UEFI_BOOT
        code, template = ovmf_files(*(ovmf or (OVMF_CODE, OVMF_VARS)))
    kernel = firmware == KERNEL_BOOT
    return VmSpec(
        name=check_name(definition.name), directory=str(directory),
        memory=parse_memory(config.get("limits.memory", ""), host_memory),
        cpus=parse_cpus(config.get("limits.cpu", "")),
        kernel=image["kernel"] if kernel else "", initrd=image["initrd"] if kernel else "",
        cmdline=(image.get("cmdline") or DEFAULT_CMDLINE) if kernel else "",
        backing=image["rootfs"], volume=str(definition.volume or directory),
        nics=_nics(definition, directory), firmware=firmware, ovmf_code=code,
        ovmf_vars=template)


def qemu_argv(qemu: str, spec: VmSpec, accel: str, incoming: bool = False) -> list[str]:
    """The full command line; QEMU daemonises itself once its devices are set up.
    Under TCG the guest's RAM is a few KiB short of ``spec.memory`` (tcg_ram.py: a QEMU
    bug would otherwise corrupt it when it migrates live).
    ``incoming``: paused, waiting for a live migration (``migrate-incoming``, see
    migration/; pflash contents travel with the RAM, the target's VARS file just has to
    exist with the same size)."""
    vm = Path(spec.directory)
    disk = _escape(Path(spec.volume) / DISK)  # the pool's path is the user's
    if spec.firmware == UEFI_BOOT:
        boot = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,"
                          f"file={_escape(spec.ovmf_code)}",
                "-drive", f"if=pflash,format=raw,unit=1,file={_escape(Path(spec.volume) / VARS)}"]
        root_device = "virtio-blk-pci,drive=root,id=root-disk,bootindex=0"
    elif spec.firmware == KERNEL_BOOT:
        boot = ["-kernel", spec.kernel, "-initrd", spec.initrd, "-append", spec.cmdline]
        root_device = "virtio-blk-pci,drive=root,id=root-disk"
    else:
        raise InvalidConfig(f"VM {spec.name!r}: unknown firmware {spec.firmware!r}")
    argv = [qemu, "-name", spec.name, "-daemonize", "-pidfile", str(vm / PIDFILE),
            "-D", str(vm / QEMU_LOG),
            "-nodefaults", "-no-user-config", "-display", "none",
            "-machine", "q35", "-accel", accel,
            "-cpu", "host" if accel == "kvm" else "max",
            "-m", ram_option(spec.memory, accel), "-smp", str(spec.cpus),
            *boot,
            "-qmp", f"unix:{vm / QMP},server=on,wait=off",
            "-qmp", f"unix:{vm / MIGRATION_QMP},server=on,wait=off",
            "-chardev", f"socket,id=console,path={vm / CONSOLE},server=on,wait=off,"
                        f"logfile={vm / CONSOLE_LOG},logappend=on",
            "-serial", "chardev:console",
            "-drive", f"file={disk},format=qcow2,if=none,id=root,cache=writeback",
            "-device", root_device,
            "-device", "virtio-serial-pci,id=serial0",
            "-chardev", f"socket,id=agent,path={vm / AGENT},server=on,wait=off",
            "-device", f"virtserialport,bus=serial0.0,chardev=agent,name={AGENT_PORT}"]
    for index, nic in enumerate(spec.nics):
        argv += ["-netdev", f"tap,id=net{index},ifname={nic.tap},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=net{index},mac={nic.hwaddr},"
                            f"id={nic.device}"]
    if incoming:
        argv += INCOMING_ARGS
    return argv


def _escape(path: str | Path) -> str:
    """A path inside a QEMU option list (``,`` doubled)."""
    return str(path).replace(",", ",,")
