"""Pure parts of the VM image build: cpio newc, module order, guest scripts, unpacking."""

from __future__ import annotations

import gzip
import io
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from node_agent.images import vm_guest
from node_agent.images import vm_initramfs as ird
from node_agent.images.errors import ImageError
from node_agent.images.vm_unpack import unpack_vm_image


def test_cpio_round_trips_every_entry_type() -> None:
    entries = [ird.directory("etc"), ird.regular("etc/odd", b"12345", 0o600),
               ird.symlink("sh", "/bin/busybox"), ird.chardev("dev/console", 5, 1)]
    parsed = ird.read_cpio_newc(ird.cpio_newc(entries, 1700000000))
    assert list(parsed) == ["etc", "etc/odd", "sh", "dev/console"]
    assert parsed["etc/odd"].data == b"12345" and parsed["etc/odd"].mode == 0o100600
    assert parsed["sh"].data == b"/bin/busybox" and stat.S_ISLNK(parsed["sh"].mode)
    assert parsed["dev/console"].rdev == (5, 1) and stat.S_ISCHR(parsed["dev/console"].mode)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs the cpio tool")
def test_gnu_cpio_reads_the_archive(tmp_path: Path) -> None:
    data = ird.cpio_newc([ird.directory("d"), ird.regular("d/f", b"hi\n")], 0)
    out = subprocess.run(["cpio", "-t"], input=data, capture_output=True, check=True).stdout
    assert out.split() == [b"d", b"d/f"]


def test_initramfs_is_gzip_and_reproducible() -> None:
    entries = [ird.regular("init", b"#!/bin/sh\n", 0o755)]
    first = ird.initramfs(entries, 5)
    assert first == ird.initramfs(entries, 5)
    assert "init" in ird.read_cpio_newc(gzip.decompress(first))


@pytest.mark.parametrize("name", ["", "/", "a/../b"])
def test_unsafe_entry_names_are_refused(name: str) -> None:
    with pytest.raises(ImageError):
        ird.cpio_newc([ird.regular(name, b"")], 0)


def test_modinfo_depends_is_read_from_the_modinfo_strings() -> None:
    blob = b"\x7fELF...\0license=GPL\0depends=virtio,virtio-ring\0vermagic=6.1\0"
    assert ird.modinfo_depends(blob) == ["virtio", "virtio_ring"]
    assert ird.modinfo_depends(b"\0depends=\0") == []
    assert ird.modinfo_depends(b"no modinfo") == []


def test_modules_load_after_their_dependencies() -> None:
    depends = {"virtio_net": ["net_failover", "virtio_ring", "virtio"],
               "net_failover": ["failover"], "failover": [], "virtio": [],
               "virtio_ring": ["virtio"], "evdev": []}
    order = ird.load_order(["virtio_net", "evdev"], depends)
    assert order.index("failover") < order.index("net_failover") < order.index("virtio_net")
    assert order.index("virtio") < order.index("virtio_ring")
    assert sorted(order) == sorted(depends)


def test_missing_or_cyclic_modules_are_errors() -> None:
    with pytest.raises(ImageError, match="not found"):
        ird.load_order(["a"], {"a": ["b"]})
    with pytest.raises(ImageError, match="cycle"):
        ird.load_order(["a"], {"a": ["b"], "b": ["a"]})


@pytest.mark.parametrize("script", [vm_guest.INIT, vm_guest.RCS, vm_guest.AGENT,
                                    vm_guest.POWER_BUTTON])
def test_guest_scripts_are_valid_shell(tmp_path: Path, script: str) -> None:
    shell = "/bin/busybox" if Path("/bin/busybox").is_file() else "sh"
    path = tmp_path / "script"
    path.write_text(script)
    subprocess.run([shell, "sh", "-n", str(path)] if shell == "/bin/busybox"
                   else [shell, "-n", str(path)], check=True, timeout=10)


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


META = b"architecture: x86_64\ncreation_date: 1\n"
QCOW2 = b"QFI\xfb" + b"\0" * 60


def test_unpack_takes_only_the_vm_files(tmp_path: Path) -> None:
    image = _tarball(tmp_path / "vm.tar.gz", {
        "metadata.yaml": META, "rootfs.img": QCOW2, "kernel": b"k", "initrd": b"i",
        "templates/x.tpl": b"t", "other": b"o"})
    dest = unpack_vm_image(image, tmp_path / "out")
    assert sorted(p.name for p in dest.iterdir()) == ["initrd", "kernel", "metadata.yaml",
                                                      "rootfs.img"]


@pytest.mark.parametrize(("members", "match"), [
    ({"metadata.yaml": META, "rootfs.img": QCOW2, "kernel": b"k"}, "no initrd"),
    ({"metadata.yaml": META, "rootfs.img": b"raw", "kernel": b"k", "initrd": b"i"}, "qcow2"),
    ({"metadata.yaml": META, "rootfs.img": QCOW2, "kernel": b"k", "initrd": b"i",
      "../evil": b"x"}, "traversal"),
])
def test_unpack_refuses_bad_images_and_leaves_nothing(tmp_path: Path,
                                                      members: dict[str, bytes],
                                                      match: str) -> None:
    image = _tarball(tmp_path / "vm.tar.gz", members)
    with pytest.raises(ImageError, match=match):
        unpack_vm_image(image, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_lxd_vm_image_without_kernel_files_unpacks_for_uefi(tmp_path: Path) -> None:
    image = _tarball(tmp_path / "vm.tar.gz", {"metadata.yaml": META, "rootfs.img": QCOW2})
    dest = unpack_vm_image(image, tmp_path / "out")
    assert sorted(p.name for p in dest.iterdir()) == ["metadata.yaml", "rootfs.img"]


def test_a_split_vm_image_gets_its_disk_as_rootfs_img(tmp_path: Path) -> None:
    meta = _tarball(tmp_path / "meta.tar.gz", {"metadata.yaml": META})
    (tmp_path / "disk.qcow2").write_bytes(QCOW2)
    dest = unpack_vm_image(meta, tmp_path / "out", tmp_path / "disk.qcow2")
    assert (dest / "rootfs.img").read_bytes() == QCOW2
