"""Pure translation of an instance's config and devices into liblxc config lines.

``build_config(definition, ...) -> [(key, value), ...]`` is all the policy of the LXC driver:
which distro includes, which id map, where logs and cgroups go, which limits and NICs. It
does no I/O, so it is unit- and property-tested; the driver only renders and writes it.

Every value that ends up in the file is checked for line breaks: a device name or a bridge
name from the API must never be able to inject a config key of its own.

Facts found on the hybrid cgroup v1+v2 Debian 12 host (liblxc 5.0.2):
- ``lxc.cgroup.dir = <prefix>/<name>`` puts the payload in ``<prefix>/<name>/lxc.payload.<name>``
  and the monitor in ``<prefix>/<name>/lxc.monitor.<name>`` of every hierarchy, so daemons
  with different prefixes never share a cgroup, even for equal container names.
- With a cgroup namespace liblxc mounts nothing on ``/sys/fs/cgroup`` unless asked with
  ``:force``; ``cgroup:rw:force`` gives the container its own (namespaced) tree, where it
  can make sub-cgroups but, unprivileged, cannot raise its own limits.
- Limits use ``lxc.cgroup.*`` (v1) for controllers mounted as v1 and ``lxc.cgroup2.*`` else.
- Debian's ``common.conf.d/00-lxcfs.conf`` adds a post-stop hook that only sleeps 0.5 s
  (for lxcfs across reboots); it doubled ``stop --force``, so the config clears it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from corral_shared.units import UnitError, parse_memory_limit
from node_agent.drivers.base import InstanceDefinition
from node_agent.idmap import IdMap

LXC_SHARE = Path("/usr/share/lxc/config")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TRUE_VALUES = frozenset({"true", "1", "yes", "on"})
STATEFUL_KEY = "migration.stateful"  # checkpointable by CRIU: stateful stop and moves

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,15}")
_HWADDR_RE = re.compile(r"[0-9a-fA-Fx]{2}(:[0-9a-fA-Fx]{2}){5}")
_RAW_KEY_RE = re.compile(r"lxc\.[A-Za-z0-9_.-]+")

Line = tuple[str, str]


class ConfigError(ValueError):
    """The instance's config or devices cannot be expressed as an LXC container."""


@dataclass(frozen=True)
class HostFacts:
    """What the config depends on: usable CPUs, total memory, controllers on cgroup v1,
    and whether the kernel enforces AppArmor."""

    cpus: tuple[int, ...]
    memory: int
    cgroup_v1: frozenset[str]
    apparmor: bool = True

    def key(self, item: str) -> str:
        """The config key for a cgroup file, ``lxc.cgroup.`` (v1) or ``lxc.cgroup2.``."""
        controller = item.split(".", 1)[0]
        return f"lxc.cgroup.{item}" if controller in self.cgroup_v1 else f"lxc.cgroup2.{item}"


def is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in TRUE_VALUES


def check_name(name: str) -> str:
    """``name`` if it is safe as a directory, hostname and cgroup name; else ConfigError."""
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"invalid container name {name!r}")
    return name


def check_prefix(prefix: str) -> str:
    """A relative cgroup path without ``..``: the daemon's own corner of every hierarchy."""
    if not _PREFIX_RE.fullmatch(prefix) or ".." in prefix.split("/"):
        raise ConfigError(f"invalid cgroup prefix {prefix!r}")
    return prefix


def _clean(value: str, what: str) -> str:
    if any(ch in value for ch in "\n\r\0"):
        raise ConfigError(f"{what} must not contain line breaks: {value!r}")
    return value


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts ``²``, which int() refuses, and
    other scripts' digits, which int() reads but liblxc and the kernel do not."""
    return text.isascii() and text.isdigit()


def parse_cpuset(text: str) -> tuple[int, ...]:
    """``"0-2,5"`` -> ``(0, 1, 2, 5)``; raises ConfigError on anything else."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        low, sep, high = part.strip().partition("-")
        if not _is_number(low) or (sep and not _is_number(high)):
            raise ConfigError(f"invalid CPU set {text!r}")
        first, last = int(low), int(high) if sep else int(low)
        if last < first:
            raise ConfigError(f"invalid CPU range {part!r} in {text!r}")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def format_cpuset(cpus: tuple[int, ...] | list[int]) -> str:
    """``(0, 1, 2, 5)`` -> ``"0-2,5"`` (the kernel's own notation)."""
    parts: list[str] = []
    ordered = sorted(set(cpus))
    start = prev = None
    for cpu in [*ordered, None]:
        if prev is not None and (cpu is None or cpu != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if cpu is not None and start is None:
            start = cpu
        prev = cpu
    return ",".join(parts)


def cpuset_for(value: str, host_cpus: tuple[int, ...]) -> str:
    """``limits.cpu`` as a cpuset: a count N takes the first N host CPUs (all if N is
    larger, as LXD does); a set (``"0,1"``, ``"0-1"``) must name host CPUs only."""
    text = value.strip()
    if _is_number(text):
        count = int(text)
        if count <= 0:
            raise ConfigError(f"limits.cpu must be a positive number of CPUs, got {value!r}")
        return format_cpuset(host_cpus[:count])
    cpus = parse_cpuset(text)
    missing = [cpu for cpu in cpus if cpu not in host_cpus]
    if missing:
        raise ConfigError(f"limits.cpu {value!r} names CPUs this host lacks: {missing} "
                          f"(host has {format_cpuset(host_cpus)})")
    return format_cpuset(cpus)


def cgroup_limits(config: Mapping[str, str], host: HostFacts, reset: bool = False) -> list[Line]:
    """``(cgroup file, value)`` for the ``limits.*`` keys in ``config``.

    With ``reset`` an absent limit yields its "no limit" value, for live updates that remove
    a limit; without, absent limits are left out (the file only says what is limited).
    """
    items: list[Line] = []
    v1_memory = "memory" in host.cgroup_v1
    cpu = config.get("limits.cpu", "")
    if cpu:
        items.append(("cpuset.cpus", cpuset_for(cpu, host.cpus)))
    elif reset:
        items.append(("cpuset.cpus", format_cpuset(host.cpus)))
    memory = config.get("limits.memory", "")
    memory_file = "memory.limit_in_bytes" if v1_memory else "memory.max"
    if memory:
        try:
            items.append((memory_file, str(parse_memory_limit(memory, host.memory))))
        except UnitError as exc:
            raise ConfigError(f"limits.memory: {exc}") from exc
    elif reset:
        items.append((memory_file, "-1" if v1_memory else "max"))
    processes = config.get("limits.processes", "")
    if processes:
        if not _is_number(processes.strip()) or int(processes) <= 0:
            raise ConfigError(f"limits.processes must be a positive integer, got {processes!r}")
        items.append(("pids.max", str(int(processes))))
    elif reset:
        items.append(("pids.max", "max"))
    return items


def nic_lines(index: int, device: str, dev: Mapping[str, str],
              config: Mapping[str, str]) -> list[Line]:
    """veth lines for one ``nic`` device (``nictype: bridged`` + ``parent``, or ``network``)."""
    nictype = dev.get("nictype", "bridged" if dev.get("network") else "")
    if nictype not in ("bridged", "p2p"):
        raise ConfigError(f"device {device!r}: nictype {nictype or '(none)'!r} is not "
                          f"supported (use nictype=bridged with parent=, or network=)")
    prefix = f"lxc.net.{index}"
    lines: list[Line] = [(f"{prefix}.type", "veth")]
    if nictype == "bridged":
        link = dev.get("parent") or dev.get("network") or ""
        if not _IFNAME_RE.fullmatch(link):
            raise ConfigError(f"device {device!r}: invalid or missing bridge {link!r}")
        lines.append((f"{prefix}.link", link))
    name = dev.get("name") or device
    if not _IFNAME_RE.fullmatch(name):
        raise ConfigError(f"device {device!r}: invalid interface name {name!r}")
    lines += [(f"{prefix}.name", name), (f"{prefix}.flags", "up")]
    hwaddr = dev.get("hwaddr") or config.get(f"volatile.{device}.hwaddr", "")
    if hwaddr:
        if not _HWADDR_RE.fullmatch(hwaddr):
            raise ConfigError(f"device {device!r}: invalid hwaddr {hwaddr!r}")
        lines.append((f"{prefix}.hwaddr", hwaddr.lower()))
    mtu = dev.get("mtu", "")
    if mtu:
        if not _is_number(mtu) or not 68 <= int(mtu) <= 65535:
            raise ConfigError(f"device {device!r}: invalid mtu {mtu!r}")
        lines.append((f"{prefix}.mtu", mtu))
    host_name = dev.get("host_name", "")
    if host_name:
        if not _IFNAME_RE.fullmatch(host_name):
            raise ConfigError(f"device {device!r}: invalid host_name {host_name!r}")
        lines.append((f"{prefix}.veth.pair", host_name))
    return lines


def _fstab_escape(path: str) -> str:
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")


def disk_lines(device: str, dev: Mapping[str, str], is_file: Callable[[str], bool]) -> list[Line]:
    """A bind mount for a host-path ``disk`` device; the root disk (``path: /``) adds nothing."""
    path = dev.get("path", "")
    if path == "/":
        return []
    source = dev.get("source", "")
    if not source.startswith("/") or not path.startswith("/") or dev.get("pool"):
        raise ConfigError(f"device {device!r}: only host-path disks (source=/..., path=/...) "
                          f"are supported")
    _clean(source, f"device {device!r} source")
    _clean(path, f"device {device!r} path")
    options = ["rbind" if is_true(dev.get("recursive")) else "bind",
               "create=file" if is_file(source) else "create=dir"]
    if is_true(dev.get("readonly")):
        options.append("ro")
    if dev.get("required", "true").strip().lower() in ("false", "0", "no", "off"):
        options.append("optional")
    target = _fstab_escape(path.lstrip("/"))
    return [("lxc.mount.entry", f"{_fstab_escape(source)} {target} none {','.join(options)} 0 0")]


def raw_lines(text: str) -> list[Line]:
    """``raw.lxc``: ``key = value`` lines appended verbatim (liblxc validates the keys)."""
    lines: list[Line] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not sep or not _RAW_KEY_RE.fullmatch(key.strip()):
            raise ConfigError(f"raw.lxc: invalid line {raw!r}")
        lines.append((key.strip(), value.strip()))
    return lines


def device_lines(definition: InstanceDefinition,
                 is_file: Callable[[str], bool] = lambda _path: False) -> list[Line]:
    """NICs (sorted by device name, so eth0 stays lxc.net.0) and mounts; ``none`` masks."""
    nics: list[Line] = []
    mounts: list[Line] = []
    count = 0
    for device in sorted(definition.devices):
        dev = definition.devices[device]
        kind = dev.get("type", "")
        if kind == "nic":
            nics += nic_lines(count, device, dev, definition.config)
            count += 1
        elif kind == "disk":
            mounts += disk_lines(device, dev, is_file)
        elif kind != "none":
            raise ConfigError(f"device {device!r}: type {kind!r} is not supported for containers")
    return (nics or [("lxc.net.0.type", "empty")]) + mounts


def build_config(definition: InstanceDefinition, *, lxcpath: Path, cgroup_prefix: str,
                 idmap: IdMap, host: HostFacts, share: Path = LXC_SHARE,
                 is_file: Callable[[str], bool] = lambda _path: False,
                 systemd: bool = False) -> list[Line]:
    """The full liblxc config of one container, in file order. Raises ConfigError.

    The halt signal stays liblxc's SIGPWR (busybox init halts on it; so does systemd where
    the image ships ``sigpwr-container-shutdown.service``, as Ubuntu's do) except for a
    ``systemd`` init, which gets SIGRTMIN+4 (poweroff): Debian's systemd ignores SIGPWR."""
    name = check_name(definition.name)
    config = definition.config
    privileged = is_true(config.get("security.privileged"))
    directory = lxcpath / name
    lines: list[Line] = [("lxc.include", str(share / "common.conf"))]
    if not privileged:
        lines.append(("lxc.include", str(share / "userns.conf")))
    if is_true(config.get("security.nesting")):
        lines.append(("lxc.include", str(share / "nesting.conf")))
    lines += [
        ("lxc.hook.post-stop", ""),  # drop lxcfs's reboot hook: a bare `sleep 0.5` per stop
        ("lxc.uts.name", name),
        ("lxc.rootfs.path", f"dir:{_clean(str(definition.rootfs), 'rootfs path')}"),
    ]
    if host.apparmor:  # else liblxc would ask CRIU's restore for an AppArmor profile
        lines.append(("lxc.apparmor.profile", "unconfined"))
    lines += [
        ("lxc.mount.auto", "cgroup:rw:force"),
        ("lxc.cgroup.dir", f"{check_prefix(cgroup_prefix)}/{name}"),
        ("lxc.log.file", _clean(str(directory / "lxc.log"), "lxcpath")),
        ("lxc.log.level", "warn"),
    ]
    if is_true(config.get(STATEFUL_KEY)):
        # CRIU cannot dump the console pty liblxc holds for the container.
        lines.append(("lxc.console.path", "none"))
    else:
        lines.append(("lxc.console.logfile", str(directory / "console.log")))
    lines += [
        ("lxc.tty.max", "0"),
        ("lxc.pty.max", "1024"),
    ]
    if not privileged:
        lines += [("lxc.idmap", f"u 0 {idmap.uid_base} {idmap.uid_count}"),
                  ("lxc.idmap", f"g 0 {idmap.gid_base} {idmap.gid_count}")]
    if systemd:
        lines.append(("lxc.signal.halt", "SIGRTMIN+4"))
    lines += [(host.key(item), value) for item, value in cgroup_limits(config, host)]
    lines += device_lines(definition, is_file)
    lines += raw_lines(config.get("raw.lxc", ""))
    return lines


def render(lines: list[Line]) -> str:
    """The config file text; refuses values that would break out of their line."""
    header = "# Written by corral at every define; local edits are lost.\n"
    return header + "".join(f"{k} = {_clean(v, k)}\n" for k, v in lines)


def attach_argv(lxcpath: Path, name: str, command: list[str], env: Mapping[str, str],
                cwd: str, uid: int, gid: int) -> list[str]:
    """``lxc-attach`` argv with a clean environment (LXD's defaults for PATH, LANG and, for
    root, HOME; ``env`` wins). lxc-attach has no cwd option: a given ``cwd`` is entered by
    ``/bin/sh`` with the directory passed as an argument, never spliced into the script."""
    if not command:
        raise ConfigError("exec: empty command")
    defaults = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"} | ({"HOME": "/root"} if uid == 0 else {})
    argv = ["lxc-attach", "-n", check_name(name), "-P", str(lxcpath), "--clear-env"]
    for key, value in (defaults | dict(env)).items():
        if not key or "=" in key or "\0" in key + value:
            raise ConfigError(f"exec: invalid environment variable {key!r}")
        argv += ["--set-var", f"{key}={value}"]
    if uid:
        argv += ["--uid", str(uid)]
    if gid:
        argv += ["--gid", str(gid)]
    argv.append("--")
    if cwd:
        argv += ["/bin/sh", "-c", 'cd -- "$1" || exit 1; shift; exec "$@"', "sh", cwd]
    return argv + list(command)
