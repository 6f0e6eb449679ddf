"""Build a tiny LXD "unified" image from the host's static busybox.

This is the image every test and demo can rely on without network access: a
busybox rootfs (~2 MB) whose init boots in milliseconds, never blocks on DHCP and
never needs a console. The build is deterministic: entry times and
``creation_date`` come from /bin/busybox's mtime, so the same busybox package gives
the same fingerprint on every host of a cluster.
"""

from __future__ import annotations

import gzip
import io
import os
import platform
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import yaml

from .errors import ImageError
from .tarball import lxd_architecture

BUSYBOX = Path("/bin/busybox")

_DIRS = {
    "bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
    "usr/share": 0o755, "usr/share/udhcpc": 0o755, "dev": 0o755, "proc": 0o555,
    "sys": 0o555, "tmp": 0o1777, "root": 0o700, "etc": 0o755, "etc/init.d": 0o755,
    "run": 0o755, "var": 0o755, "var/log": 0o755, "var/tmp": 0o1777, "home": 0o755,
    "mnt": 0o755, "lib": 0o755,
}

INITTAB = """\
# busybox init: no getty (a container may have no console); init just waits.
# Signals to init: SIGPWR/SIGUSR1/SIGUSR2 halt, SIGTERM reboots, SIGINT runs ctrlaltdel.
::sysinit:/etc/init.d/rcS
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
"""

RCS = """\
#!/bin/sh
# Boot script: must never block and must tolerate missing devices (no eth0, no /sys).
[ -e /proc/self ] || mount -t proc proc /proc
[ -d /sys/class ] || mount -t sysfs sysfs /sys 2>/dev/null
mkdir -p /run /tmp /var/log
[ -s /etc/hostname ] && hostname -F /etc/hostname
ip link set lo up 2>/dev/null
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    # Static address given by the host (lxc.net.0.ipv4.address)? Then no DHCP client,
    # which also keeps the container checkpointable by CRIU.
    if ! ip -4 addr show dev eth0 | grep -q inet; then
        udhcpc -f -S -i eth0 -s /usr/share/udhcpc/default.script -p /run/udhcpc.eth0.pid \\
            -T 2 -A 5 </dev/null >/dev/null 2>&1 &
    fi
fi
exit 0
"""

UDHCPC_SCRIPT = """\
#!/bin/sh
# udhcpc hook: apply the lease with `ip` only.
RESOLV=/etc/resolv.conf
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/$mask "; then
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/$mask" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    fi
    for r in $router; do
        ip route replace default via "$r" dev "$interface"
        break
    done
    if [ -n "$dns" ]; then
        {
            [ -n "$domain" ] && echo "search $domain"
            for d in $dns; do echo "nameserver $d"; done
        } > "$RESOLV.tmp" && mv "$RESOLV.tmp" "$RESOLV"
    fi
    ;;
esac
exit 0
"""

_FILES: dict[str, tuple[str, int]] = {
    "etc/inittab": (INITTAB, 0o644),
    "etc/init.d/rcS": (RCS, 0o755),
    "usr/share/udhcpc/default.script": (UDHCPC_SCRIPT, 0o755),
    "etc/passwd": ("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
                   0o644),
    "etc/group": ("root:x:0:\nnogroup:x:65534:\n", 0o644),
    "etc/shadow": ("root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", 0o600),
    "etc/hostname": ("busybox\n", 0o644),
    "etc/hosts": ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644),
    "etc/resolv.conf": ("", 0o644),
    "etc/fstab": ("", 0o644),
    "etc/profile": ("export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nexport HOME=/root\n", 0o644),
}


def build_busybox_image(out_path: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Write a gzip'd unified LXD image of a busybox system to ``out_path``; return it.

    Raises ImageError if busybox-static is not installed.
    """
    if not BUSYBOX.is_file():
        raise ImageError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    binary = BUSYBOX.read_bytes()
    mtime = int(BUSYBOX.stat().st_mtime)
    applets = _applets()
    if progress:
        progress(f"busybox: {len(applets)} applets")
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "metadata.yaml", _metadata(mtime).encode(), 0o644, mtime)
        _add_dir(tf, "templates", 0o755, mtime)
        _add(tf, "templates/hostname.tpl", b"{{ instance.name }}\n", 0o644, mtime)
        _add_dir(tf, "rootfs", 0o755, mtime)
        for name, mode in sorted(_DIRS.items()):
            _add_dir(tf, f"rootfs/{name}", mode, mtime)
        _add(tf, "rootfs/bin/busybox", binary, 0o755, mtime)
        for name, (text, mode) in sorted(_FILES.items()):
            _add(tf, f"rootfs/{name}", text.encode(), mode, mtime)
        _add_link(tf, "rootfs/etc/mtab", "/proc/mounts", mtime)
        _add_link(tf, "rootfs/var/run", "/run", mtime)
        for applet in applets:
            _add_link(tf, f"rootfs/{applet}", "/bin/busybox", mtime)
    os.replace(tmp, out_path)
    if progress:
        progress(f"busybox image written to {out_path}")
    return out_path


def _applets() -> list[str]:
    """Applet paths relative to / (``busybox --list-full``), plus sbin/init."""
    try:
        out = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True,
                             check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageError(f"{BUSYBOX} --list-full failed: {exc}") from exc
    names = {line.strip().lstrip("/") for line in out.splitlines() if line.strip()}
    names.add("sbin/init")
    names.discard("bin/busybox")
    # Only applets whose directory exists in the image (e.g. not a stray "linuxrc" dir).
    return sorted(n for n in names if os.path.dirname(n) in _DIRS or "/" not in n)


def _metadata(mtime: int) -> str:
    arch = lxd_architecture(platform.machine())  # the host's busybox: "x86_64" here
    meta = {
        "architecture": arch,
        "creation_date": mtime,
        "properties": {
            "os": "busybox",
            "description": "BusyBox (static, from Debian busybox-static)",
            "architecture": arch,
        },
        "templates": {
            "/etc/hostname": {"when": ["create", "copy"], "template": "hostname.tpl"},
        },
    }
    return yaml.safe_dump(meta, sort_keys=True)


def _info(name: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _add(tf: tarfile.TarFile, name: str, data: bytes, mode: int, mtime: int) -> None:
    info = _info(name, tarfile.REGTYPE, mode, mtime)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _add_dir(tf: tarfile.TarFile, name: str, mode: int, mtime: int) -> None:
    tf.addfile(_info(name, tarfile.DIRTYPE, mode, mtime))


def _add_link(tf: tarfile.TarFile, name: str, target: str, mtime: int) -> None:
    info = _info(name, tarfile.SYMTYPE, 0o777, mtime)
    info.linkname = target
    tf.addfile(info)
