"""The real busybox image: built from the host's busybox-static, imported, booted by LXC."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from node_agent.images import ImageStore, build_busybox_image

pytestmark = pytest.mark.real

SHIFT = 1000000


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not Path("/bin/busybox").is_file():
        pytest.skip("needs /bin/busybox: apt-get install busybox-static")
    return build_busybox_image(tmp_path_factory.mktemp("build") / "busybox.tar.gz")


def test_busybox_image_builds_reproducibly(tmp_path: Path, image: Path) -> None:
    again = build_busybox_image(tmp_path / "again.tar.gz")
    assert again.read_bytes() == image.read_bytes()  # same fingerprint on every host
    with tarfile.open(image) as tf:
        members = {m.name: m for m in tf.getmembers()}
        meta = yaml.safe_load(tf.extractfile("metadata.yaml").read())  # type: ignore[union-attr]
        template = tf.extractfile("templates/hostname.tpl").read()  # type: ignore[union-attr]
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    assert members["rootfs/tmp"].mode == 0o1777
    assert meta["architecture"] == "x86_64" and meta["properties"]["os"] == "busybox"
    assert meta["templates"]["/etc/hostname"] == {"when": ["create", "copy"],
                                                  "template": "hostname.tpl"}
    assert template.strip() == b"{{ instance.name }}"


@pytest.mark.skipif(os.geteuid() != 0, reason="uid shifting needs root")
def test_imported_busybox_unpacks_to_a_bootable_tree(tmp_path: Path, image: Path) -> None:
    store = ImageStore(tmp_path / "images")
    info = store.import_file(image)
    assert info.properties["os"] == "busybox" and info.type == "container"
    tree = store.rootfs_template(info.fingerprint, SHIFT)
    assert os.readlink(tree / "sbin/init") == "/bin/busybox"
    assert os.lstat(tree / "bin/busybox").st_uid == SHIFT
    for applet in ("bin/sh", "sbin/ip", "sbin/udhcpc", "bin/mount", "sbin/poweroff"):
        assert os.readlink(tree / applet) == "/bin/busybox", applet
    inittab = [line for line in (tree / "etc/inittab").read_text().splitlines()
               if not line.startswith("#")]
    assert "::sysinit:/etc/init.d/rcS" in inittab
    assert not any("getty" in line or "respawn" in line for line in inittab)
    assert os.access(tree / "etc/init.d/rcS", os.X_OK)
    assert os.access(tree / "usr/share/udhcpc/default.script", os.X_OK)


def lxc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=check)


@pytest.mark.skipif(shutil.which("lxc-start") is None or os.geteuid() != 0,
                    reason="needs root and LXC (apt-get install lxc)")
def test_busybox_boots_in_lxc_and_halts_on_sigpwr(tmp_path: Path, image: Path) -> None:
    store = ImageStore(tmp_path / "images")
    fp = store.import_file(image).fingerprint
    rootfs = tmp_path / "ct" / "rootfs"
    shutil.copytree(store.rootfs_template(fp, None), rootfs, symlinks=True)
    store.render_templates(fp, rootfs, "bbtest", "create", None)
    name, lxcpath = "bbtest", tmp_path / "lxc"
    (lxcpath / name).mkdir(parents=True)
    (lxcpath / name / "config").write_text(
        f"lxc.uts.name = {name}\nlxc.rootfs.path = dir:{rootfs}\nlxc.net.0.type = empty\n"
        "lxc.apparmor.profile = unconfined\nlxc.autodev = 1\n"
        "lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed\n")
    base = ["-n", name, "-P", str(lxcpath)]
    lxc("lxc-start", *base, "-d")
    try:
        out = lxc("lxc-attach", *base, "--", "/bin/sh", "-c", "cat /etc/hostname; hostname; ps")
        lines = out.stdout.splitlines()
        assert lines[:2] == [name, name]
        assert any(line.split()[0] == "1" and line.split()[-1] == "init" for line in lines[3:])
        # lxc-stop without -k sends SIGPWR (lxc.signal.halt default); busybox init halts.
        lxc("lxc-stop", *base, "-t", "10")
        assert lxc("lxc-info", *base, "-sH").stdout.strip() == "STOPPED"
    finally:
        lxc("lxc-stop", *base, "-k", check=False)
