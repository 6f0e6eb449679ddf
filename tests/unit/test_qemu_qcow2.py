"""Reading and repointing a qcow2 overlay's backing file (real qemu-img, tiny images)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from node_agent.drivers.base import DriverError
from node_agent.drivers.qemu.qcow2 import backing_file, repoint

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def _qcow2(path: Path, backing: Path | None = None) -> Path:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-b", str(backing), "-F", "qcow2"]
    subprocess.run([*argv, str(path), "8M"], check=True)
    return path


def test_an_overlay_moved_here_is_repointed_at_this_members_image(tmp_path: Path) -> None:
    theirs = _qcow2(tmp_path / "theirs.img")
    ours = tmp_path / "ours.img"
    shutil.copyfile(theirs, ours)
    overlay = _qcow2(tmp_path / "root.qcow2", backing=theirs)
    assert backing_file(overlay) == str(theirs)
    repoint(overlay, ours)
    assert backing_file(overlay) == str(ours)
    info = subprocess.run(["qemu-img", "info", "--output=json", str(overlay)], check=True,
                          capture_output=True, text=True).stdout
    assert f'"backing-filename": "{ours}"' in info
    repoint(overlay, ours)  # already right: nothing to do
    assert backing_file(theirs) is None


def test_a_file_that_is_not_qcow2_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 4096)
    with pytest.raises(DriverError, match="not a qcow2 image"):
        backing_file(raw)
    with pytest.raises(DriverError, match="cannot read"):
        backing_file(tmp_path / "missing.img")
