"""Build a tiny LXD-layout VM image: busybox in an initramfs, booted by Debian's cloud kernel.

::

    apt-get download linux-image-6.1.0-N-cloud-amd64   (newest N; once, then cached)
      dpkg-deb -x --> <cache>/kernels/<package>/{vmlinuz, modules/*.ko, modules.order}
    busybox-static + vm_guest scripts + modules --> initrd (cpio newc, gzip; vm_initramfs)
    mke2fs -d + qemu-img convert                --> rootfs.img (qcow2, small ext4)
    metadata.yaml + rootfs.img + kernel + initrd --> <out_dir>/busybox-vm.tar.gz

The tarball is an LXD unified VM image (``metadata.yaml`` + ``rootfs.img``) plus two corral
files, ``kernel`` and ``initrd``, for direct kernel boot (no firmware, no bootloader). The
guest runs from the initramfs; the root disk is mounted at /mnt/root when present.

The UEFI variant (``uefi=True``, ``busybox-vm-uefi.tar.gz``) is what LXD's own VM images
look like: no kernel files, a GPT disk that boots through firmware (OVMF)::

    systemd's EFI stub + os-release + cmdline + vmlinuz + initrd
        --objcopy--> BOOTX64.EFI (a unified kernel image)
    mkfs.vfat + mcopy --> ESP (FAT, /EFI/BOOT/BOOTX64.EFI: the removable-media path,
                                no NVRAM boot entry needed)
    sfdisk (GPT) + ESP + the same ext4 --> rootfs.img (qcow2)
"""

from __future__ import annotations

import gzip
import io
import os
import platform
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import vm_guest as guest
from . import vm_initramfs as ird
from .busybox import BUSYBOX, UDHCPC_SCRIPT, _applets
from .errors import ImageError
from .tarball import lxd_architecture

KERNEL_PACKAGE_RE = re.compile(r"^linux-image-6\.1\.0-(\d+)-cloud-amd64$")
# Everything else the guest needs is built into the cloud kernel (ext4, 8250 serial, ACPI).
WANTED_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_console", "button",
                  "evdev")
ROOT_DISK_SIZE = "64M"
IMAGE_NAME = "busybox-vm.tar.gz"
UEFI_IMAGE_NAME = "busybox-vm-uefi.tar.gz"
EFI_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC3B8"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
MIB = 1 << 20
# Fixed identifiers keep the build reproducible.
DISK_GUID = "6F1C0B7E-7D5A-4C59-9A55-2C6F0A1E0010"
ESP_GUID = "6F1C0B7E-7D5A-4C59-9A55-2C6F0A1E0011"
ROOT_GUID = "6F1C0B7E-7D5A-4C59-9A55-2C6F0A1E0012"
ESP_VOLUME_ID = "C0AA1E01"
_TIMEOUT = 300

Progress = Callable[[str], None] | None


@dataclass(frozen=True)
class Kernel:
    """A cached kernel: its package name, vmlinuz and modules in load order."""

    package: str
    vmlinuz: Path
    modules: tuple[Path, ...]


def default_cache_dir() -> Path:
    """``$CORRAL_CACHE_DIR`` or /var/cache/corral (kept between builds and test runs)."""
    return Path(os.environ.get("CORRAL_CACHE_DIR") or "/var/cache/corral")


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False,
                              timeout=_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageError(f"{argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise ImageError(f"{' '.join(argv)} failed (exit {done.returncode}): "
                         f"{done.stderr.strip()[-500:]}")
    return done.stdout


# -- the kernel -------------------------------------------------------------------------------


def _cached_kernel(kernels: Path) -> Kernel | None:
    """The newest complete kernel in the cache, if any."""
    best: tuple[int, Path] | None = None
    for entry in kernels.glob("linux-image-*") if kernels.is_dir() else ():
        match = KERNEL_PACKAGE_RE.match(entry.name)
        if match and (entry / "modules.order").is_file():
            best = max(best or (-1, entry), (int(match[1]), entry))
    if best is None:
        return None
    directory = best[1]
    order = (directory / "modules.order").read_text().split()
    return Kernel(directory.name, directory / "vmlinuz",
                  tuple(directory / "modules" / f"{name}.ko" for name in order))


def newest_kernel_package() -> str:
    """The newest ``linux-image-6.1.0-N-cloud-amd64`` apt knows; ImageError if none."""
    out = _run(["apt-cache", "search", "--names-only", r"^linux-image-6\.1\.0-.*-cloud-amd64$"])
    found = [(int(m[1]), m[0]) for line in out.splitlines()
             if (m := KERNEL_PACKAGE_RE.match(line.split(" ", 1)[0]))]
    if not found:
        raise ImageError("no linux-image-6.1.0-*-cloud-amd64 package in apt's lists "
                         "(run apt-get update)")
    return max(found)[1]


def fetch_kernel(cache_dir: Path | None = None, progress: Progress = None) -> Kernel:
    """The cached kernel, or download the newest cloud kernel package and cache its
    vmlinuz and the modules the guest needs. Raises ImageError."""
    kernels = (cache_dir or default_cache_dir()) / "kernels"
    if (cached := _cached_kernel(kernels)) is not None:
        return cached
    package = newest_kernel_package()
    if progress:
        progress(f"downloading {package}")
    kernels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=kernels) as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # apt-get download drops privileges to _apt when it can
        _run(["apt-get", "download", package], cwd=work)
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise ImageError(f"apt-get download {package} gave {len(debs)} .deb files")
        _run(["dpkg-deb", "-x", str(debs[0]), str(work / "x")])
        staged = work / package
        _stage_kernel(work / "x", staged)
        target = kernels / package
        shutil.rmtree(target, ignore_errors=True)
        os.rename(staged, target)
    kernel = _cached_kernel(kernels)
    if kernel is None:  # pragma: no cover - _stage_kernel wrote modules.order
        raise ImageError(f"kernel cache {kernels} is unreadable")
    return kernel


def _stage_kernel(tree: Path, staged: Path) -> None:
    vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise ImageError("the kernel package has no /boot/vmlinuz-*")
    every = {p.name.removesuffix(".ko").replace("-", "_"): p
             for p in (tree / "lib" / "modules").rglob("*.ko")}
    depends: dict[str, list[str]] = {}
    pending = list(WANTED_MODULES)
    while pending:
        name = pending.pop()
        if name in depends or name not in every:
            continue
        depends[name] = ird.modinfo_depends(every[name].read_bytes())
        pending += depends[name]
    order = ird.load_order(WANTED_MODULES, depends)
    (staged / "modules").mkdir(parents=True)
    shutil.copy2(vmlinuz[-1], staged / "vmlinuz")
    for name in order:
        shutil.copy2(every[name], staged / "modules" / f"{name}.ko")
    (staged / "modules.order").write_text("\n".join(order) + "\n")


# -- the initramfs and the root disk ------------------------------------------------------------

_DIRS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "usr/share", "usr/share/udhcpc", "dev",
         "proc", "sys", "tmp", "root", "etc", "etc/init.d", "etc/acpi", "etc/acpi/PWRF", "run",
         "var", "var/log", "mnt", "mnt/root", "lib", "lib/modules")

_FILES: dict[str, tuple[str, int]] = {
    "init": (guest.INIT, 0o755),
    "etc/inittab": (guest.INITTAB, 0o644),
    "etc/init.d/rcS": (guest.RCS, 0o755),
    "etc/acpi/PWRF/00000080": (guest.POWER_BUTTON, 0o755),
    "usr/sbin/corral-agent": (guest.AGENT, 0o755),
    "usr/share/udhcpc/default.script": (UDHCPC_SCRIPT, 0o755),
    "etc/passwd": ("root:x:0:0:root:/root:/bin/sh\n", 0o644),
    "etc/group": ("root:x:0:\n", 0o644),
    "etc/hostname": ("busybox-vm\n", 0o644),
    "etc/hosts": ("127.0.0.1\tlocalhost\n", 0o644),
    "etc/resolv.conf": ("", 0o644),
    "etc/profile": ("export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nexport HOME=/root\n", 0o644),
}


def initramfs_entries(busybox: bytes, applets: list[str], kernel: Kernel) -> list[ird.Entry]:
    """Everything in the guest's initramfs, parents first."""
    entries = [ird.directory(name, 0o1777 if name == "tmp" else 0o755) for name in _DIRS]
    entries += [ird.chardev("dev/console", 5, 1), ird.chardev("dev/null", 1, 3, 0o666)]
    entries.append(ird.regular("bin/busybox", busybox, 0o755))
    entries += [ird.symlink(applet, "/bin/busybox") for applet in applets]
    entries += [ird.regular(name, text.encode(), mode) for name, (text, mode)
                in _FILES.items()]
    entries += [ird.regular(f"lib/modules/{ko.name}", ko.read_bytes()) for ko in kernel.modules]
    order = "".join(f"{ko.stem}\n" for ko in kernel.modules)
    entries.append(ird.regular("etc/modules", order.encode()))
    return entries


def build_root_disk(target: Path, mtime: int) -> None:
    """A small ext4 (a README only) as qcow2; needs mke2fs and qemu-img."""
    with tempfile.TemporaryDirectory(prefix="corral-vmdisk-") as tmp:
        raw = _root_fs(Path(tmp), mtime)
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(target)])


def _root_fs(tmp: Path, mtime: int) -> Path:
    """The raw ext4 of the root disk, made in ``tmp``."""
    tree = tmp / "tree"
    tree.mkdir()
    (tree / "README").write_text("corral busybox VM root disk\n")
    for path in (tree / "README", tree):
        os.utime(path, (mtime, mtime))
    raw = tmp / "root.raw"
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "E2FSPROGS_FAKE_TIME": str(mtime)}
    try:
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "corral-root",
                        "-U", "6f1c0b7e-7d5a-4c59-9a55-2c6f0a1e0001",
                        "-E", "root_owner=0:0,hash_seed=6f1c0b7e-7d5a-4c59-9a55-2c6f0a1e0002",
                        "-d", str(tree), str(raw), ROOT_DISK_SIZE],
                       check=True, capture_output=True, env=env, timeout=_TIMEOUT)
        # mke2fs -d copies each file's ctime, which utime cannot set: fix it after.
        subprocess.run(["debugfs", "-w", "-R", f"sif /README ctime @{mtime}", str(raw)],
                       check=True, capture_output=True, env=env, timeout=_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageError(f"mke2fs/debugfs failed (apt-get install e2fsprogs): "
                         f"{exc}") from exc
    return raw


# -- the UEFI disk ------------------------------------------------------------------------------


def _stub_end(stub: Path) -> tuple[int, int]:
    """The first address past the stub's sections, and its section alignment (objdump)."""
    end = 0
    for line in _run(["objdump", "-h", str(stub)]).splitlines():
        fields = line.split()
        if len(fields) == 7 and fields[0].isdigit():  # Idx Name Size VMA LMA Off Algn
            end = max(end, int(fields[3], 16) + int(fields[2], 16))
    align = 0x1000
    for line in _run(["objdump", "-p", str(stub)]).splitlines():
        if line.startswith("SectionAlignment"):
            align = max(align, int(line.split()[1], 16))
    if not end:
        raise ImageError(f"objdump -h {stub} shows no sections")
    return end, align


def unified_kernel_image(target: Path, vmlinuz: Path, initrd: Path, cmdline: str,
                         osrel: str) -> None:
    """``target``: systemd's EFI stub with .osrel, .cmdline, .linux and .initrd sections
    appended, each at an aligned address past the stub's own (where the stub finds them).
    Needs objcopy/objdump (binutils) and systemd-boot-efi."""
    if not EFI_STUB.is_file():
        raise ImageError(f"{EFI_STUB} is missing: apt-get install systemd-boot-efi")
    if shutil.which("objcopy") is None:
        raise ImageError("objcopy is missing: apt-get install binutils")
    work = target.parent
    (work / "osrel").write_text(osrel)
    (work / "cmdline").write_text(cmdline)
    address, align = _stub_end(EFI_STUB)
    argv = ["objcopy"]
    for section, path in ((".osrel", work / "osrel"), (".cmdline", work / "cmdline"),
                          (".linux", vmlinuz), (".initrd", initrd)):
        address = -(-address // align) * align
        argv += ["--add-section", f"{section}={path}",
                 "--change-section-vma", f"{section}={address:#x}"]
        # The kernel may decompress in place, over init_size bytes from its start: the
        # initrd goes past that, or it would be overwritten (only memory: the file
        # stays as small as its sections).
        address += max(path.stat().st_size,
                       _init_size(path) if section == ".linux" else 0)
    _run([*argv, str(EFI_STUB), str(target)])


def _init_size(vmlinuz: Path) -> int:
    """The memory a bzImage needs to decompress in place (its setup header's init_size)."""
    with open(vmlinuz, "rb") as handle:
        header = handle.read(0x264)
    if len(header) < 0x264 or header[0x202:0x206] != b"HdrS":
        raise ImageError(f"{vmlinuz} is not an x86 bzImage")
    return int.from_bytes(header[0x260:0x264], "little")


def _esp(target: Path, uki: Path, size: int, mtime: int) -> None:
    """A FAT file system of ``size`` bytes holding ``uki`` as \\EFI\\BOOT\\BOOTX64.EFI."""
    for tool, package in (("mkfs.vfat", "dosfstools"), ("mcopy", "mtools")):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} is missing: apt-get install {package}")
    with open(target, "wb") as out:
        out.truncate(size)
    _run(["mkfs.vfat", "-i", ESP_VOLUME_ID, "-n", "CORRAL-ESP", str(target)])
    os.utime(uki, (mtime, mtime))
    env_image = f"-i{target}"
    _run(["mmd", env_image, "::/EFI", "::/EFI/BOOT"])
    _run(["mcopy", "-m", env_image, str(uki), "::/EFI/BOOT/BOOTX64.EFI"])


def build_uefi_disk(target: Path, uki: Path, mtime: int) -> None:
    """``target`` (qcow2): GPT, an EFI system partition holding ``uki``, then the root ext4
    (partition 2). Needs sfdisk (fdisk), dosfstools, mtools, e2fsprogs and qemu-img."""
    if shutil.which("sfdisk") is None:
        raise ImageError("sfdisk is missing: apt-get install fdisk")
    with tempfile.TemporaryDirectory(prefix="corral-uefidisk-") as tmp:
        work = Path(tmp)
        root = _root_fs(work, mtime)
        esp_size = max(32 * MIB, -(-(uki.stat().st_size + 4 * MIB) // MIB) * MIB)
        _esp(work / "esp.raw", uki, esp_size, mtime)
        esp_start, root_start = MIB, MIB + esp_size
        root_size = root.stat().st_size
        raw = work / "disk.raw"
        with open(raw, "wb") as out:
            out.truncate(root_start + root_size + MIB)  # + room for the backup GPT
        script = (f"label: gpt\nlabel-id: {DISK_GUID}\nunit: sectors\n"
                  f"start={esp_start // 512}, size={esp_size // 512}, type={ESP_TYPE}, "
                  f"uuid={ESP_GUID}, name=\"EFI System\"\n"
                  f"start={root_start // 512}, size={root_size // 512}, type={LINUX_TYPE}, "
                  f"uuid={ROOT_GUID}, name=\"corral-root\"\n")
        try:
            subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(raw)],
                           input=script, text=True, check=True, capture_output=True,
                           timeout=_TIMEOUT)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            raise ImageError(f"sfdisk failed: {detail}") from exc
        with open(raw, "r+b") as disk:
            for offset, part in ((esp_start, work / "esp.raw"), (root_start, root)):
                disk.seek(offset)
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, disk, MIB)
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(target)])


# -- the tarball --------------------------------------------------------------------------------


def _metadata(mtime: int, kernel: Kernel, uefi: bool = False) -> bytes:
    arch = lxd_architecture(platform.machine())
    properties = {
        "os": "busybox",
        "description": (f"BusyBox VM (UEFI, unified kernel image, Debian {kernel.package})"
                        if uefi else f"BusyBox VM (initramfs, Debian {kernel.package})"),
        "architecture": arch,
        "type": "virtual-machine",
    }
    corral: dict[str, str] = {"agent": guest.AGENT_PORT}
    if uefi:
        properties["requirements.secureboot"] = "false"  # unsigned, as LXD names it
    else:
        corral.update({"kernel": "kernel", "initrd": "initrd", "cmdline": guest.CMDLINE})
    meta = {"architecture": arch, "creation_date": mtime, "properties": properties,
            "templates": {}, "corral": corral}
    return yaml.safe_dump(meta, sort_keys=True).encode()


def build_busybox_vm_image(out_dir: Path, cache_dir: Path | None = None,
                           progress: Progress = None, uefi: bool = False) -> Path:
    """Write ``<out_dir>/busybox-vm.tar.gz`` (unified VM image + kernel + initrd) or, with
    ``uefi``, ``busybox-vm-uefi.tar.gz`` (an LXD VM image: no kernel files, a GPT disk
    whose ESP holds a unified kernel image); return it.

    Raises ImageError if busybox-static, e2fsprogs, qemu-utils or the kernel package (and
    for ``uefi`` systemd-boot-efi, binutils, fdisk, dosfstools, mtools) are missing."""
    if not BUSYBOX.is_file():
        raise ImageError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    if shutil.which("qemu-img") is None:
        raise ImageError("qemu-img is missing: apt-get install qemu-utils")
    kernel = fetch_kernel(cache_dir, progress)
    mtime = max(int(BUSYBOX.stat().st_mtime), int(kernel.vmlinuz.stat().st_mtime))
    initrd = ird.initramfs(initramfs_entries(BUSYBOX.read_bytes(), _applets(), kernel), mtime)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = UEFI_IMAGE_NAME if uefi else IMAGE_NAME
    out = out_dir / name
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as tmp:
        disk = Path(tmp) / "rootfs.img"
        if uefi:
            (Path(tmp) / "initrd").write_bytes(initrd)
            uki = Path(tmp) / "BOOTX64.EFI"
            unified_kernel_image(uki, kernel.vmlinuz, Path(tmp) / "initrd", guest.CMDLINE,
                                 f'NAME="corral busybox VM"\nID=busybox\n'
                                 f'VERSION_ID="{kernel.package}"\n')
            if progress:
                progress(f"unified kernel image: {uki.stat().st_size} bytes")
            build_uefi_disk(disk, uki, mtime)
        else:
            build_root_disk(disk, mtime)
        staged = Path(tmp) / name
        with open(staged, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
            _add(tf, "metadata.yaml", _metadata(mtime, kernel, uefi), mtime)
            _add(tf, "rootfs.img", disk.read_bytes(), mtime)
            if not uefi:
                _add(tf, "kernel", kernel.vmlinuz.read_bytes(), mtime)
                _add(tf, "initrd", initrd, mtime)
        os.replace(staged, out)
    if progress:
        progress(f"busybox VM image written to {out}")
    return out


def _add(tf: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tf.addfile(info, io.BytesIO(data))
