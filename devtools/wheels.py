"""Wheels of corral and every dependency, built from a checkout, in one archive: what the
Ansible playbook ships to hosts that have no internet and no compiler
(``pip install --no-index --find-links``).

The project's wheel is built from a clean copy of the files git tracks or would track (as
the compose image's, ``devtools.compose_image.project_files``): a stale ``build/`` of
setuptools in the checkout could otherwise slip deleted modules into it. The archive is
reproducible: the wheel is built with ``SOURCE_DATE_EPOCH`` of the last commit (so the same
tree gives the same bytes) and the tar has sorted members with fixed times and owners. The
playbook copies it and reinstalls only when its checksum changes, so building again from an
unchanged checkout changes nothing on the hosts.

    python -m devtools.wheels [OUTDIR]     # default build/: OUTDIR/wheels/*.whl and
                                           # OUTDIR/corral-wheels.tar
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

from devtools.compose_image import project_files

ARCHIVE = "corral-wheels.tar"
BUILD_TIMEOUT = 900.0  # s: the first build downloads every dependency


def source_date_epoch(checkout: Path) -> str:
    """The last commit's time, or 0 outside a git checkout (still reproducible)."""
    proc = subprocess.run(["git", "-C", str(checkout), "log", "-1", "--format=%ct"],
                          capture_output=True, text=True, check=False, timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "0"


def tar_bytes(files: Iterable[tuple[str, bytes]]) -> bytes:
    """A tar of ``(name, content)`` pairs whose bytes depend on nothing else: sorted names,
    mtime 0, root-owned, mode 0644."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, content in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(content), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def build(checkout: Path, outdir: Path, python: str = sys.executable,
          epoch: str | None = None) -> Path:
    """``pip wheel`` of ``checkout`` into ``outdir``/wheels (old wheels removed first),
    then the archive ``outdir``/corral-wheels.tar; returns the archive's path. ``epoch``
    (``SOURCE_DATE_EPOCH``) defaults to the last commit's time; another one gives other
    bytes for the same code (the test of an upgrade uses that).

    Raises RuntimeError with pip's output when the build fails.
    """
    wheels = outdir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for old in wheels.glob("*.whl"):
        old.unlink()
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch or source_date_epoch(checkout)}
    with tempfile.TemporaryDirectory(prefix="corral-src-") as source:
        for name in project_files(checkout):
            (Path(source) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(checkout / name, Path(source) / name)
        proc = subprocess.run([python, "-m", "pip", "wheel", "-q",
                               "--disable-pip-version-check", source, "-w", str(wheels)],
                              env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                              check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel failed: {proc.stderr[-3000:]}")
    found = sorted(wheels.glob("*.whl"))
    if not any(w.name.startswith("corral-") for w in found):
        raise RuntimeError(f"pip wheel made no corral wheel in {wheels}")
    archive = outdir / ARCHIVE
    tmp = archive.with_suffix(".tmp")
    tmp.write_bytes(tar_bytes((w.name, w.read_bytes()) for w in found))
    tmp.replace(archive)
    return archive


def main(argv: list[str]) -> int:
    checkout = Path(__file__).resolve().parent.parent
    outdir = Path(argv[0]) if argv else checkout / "build"
    print(build(checkout, outdir.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
