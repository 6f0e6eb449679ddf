"""Reading image tarballs safely: format sniffing, member-name checks, size limits.

Tarballs are always read as streams (``r|*``), once, front to back: that works for
gzip, bzip2 and xz through :mod:`tarfile`, and for zstd (common in LXD images, not
supported by :mod:`tarfile`) through a ``zstd -dc`` pipe.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import ImageError

METADATA_LIMIT = 1 << 20  # metadata.yaml and each template are small text files
TEMPLATES_LIMIT = 16 << 20

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SQUASHFS_MAGIC = b"hsqs"
_QCOW2_MAGIC = b"QFI\xfb"

# LXD reports architectures by their kernel names; image metadata often uses
# distribution names.
_ARCH_ALIASES = {
    "amd64": "x86_64",
    "x86-64": "x86_64",
    "arm64": "aarch64",
    "armhf": "armv7l",
    "armel": "armv6l",
    "i386": "i686",
    "386": "i686",
    "ppc64el": "ppc64le",
    "riscv64": "riscv64",
}


def sniff(path: Path) -> str:
    """Return "squashfs", "qcow2", "zstd" or "tar" (anything else tarfile may read)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == _SQUASHFS_MAGIC:
        return "squashfs"
    if head == _QCOW2_MAGIC:
        return "qcow2"
    if head == _ZSTD_MAGIC:
        return "zstd"
    return "tar"


@contextlib.contextmanager
def open_stream(path: Path) -> Iterator[tarfile.TarFile]:
    """Open ``path`` as a tar stream; raises ImageError if it is not a (readable) tarball."""
    proc: subprocess.Popen[bytes] | None = None
    fileobj: IO[bytes] | None = None
    try:
        if sniff(path) == "zstd":
            zstd = shutil.which("zstd")
            if zstd is None:
                raise ImageError(f"{path.name} is zstd-compressed: apt-get install zstd")
            proc = subprocess.Popen([zstd, "-dcq", str(path)], stdout=subprocess.PIPE)
            fileobj = proc.stdout
            tf = tarfile.open(fileobj=fileobj, mode="r|")
        else:
            tf = tarfile.open(path, mode="r|*")
    except (tarfile.TarError, OSError) as exc:
        _reap(proc)
        raise ImageError(f"{path.name} is not a valid tarball: {exc}") from exc
    try:
        yield tf
    except tarfile.TarError as exc:
        raise ImageError(f"{path.name} is a corrupt tarball: {exc}") from exc
    finally:
        tf.close()
        _reap(proc)


def _reap(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    if proc.stdout is not None:
        proc.stdout.close()
    proc.kill()
    proc.wait()


def normalize(name: str) -> str:
    """Return a member name as a relative path without "." parts ("" is the top).

    Raises ImageError for absolute names and names with ".." components: they would
    escape the directory the archive is unpacked into.
    """
    if name.startswith("/"):
        raise ImageError(f"unsafe absolute path in image: {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"unsafe path traversal in image: {name!r}")
    return "/".join(parts)


def check_member(member: tarfile.TarInfo, rootfs_prefix: str | None) -> str:
    """Validate one member and return its normalized name.

    ``rootfs_prefix`` is "rootfs" for unified tarballs (device nodes are only
    acceptable inside it) and None for a rootfs-only tarball.
    """
    name = normalize(member.name)
    if member.islnk():
        normalize(member.linkname)
    inside = rootfs_prefix is None or name == rootfs_prefix or name.startswith(rootfs_prefix + "/")
    if (member.ischr() or member.isblk()) and not inside:
        raise ImageError(f"device node outside rootfs in image: {member.name!r}")
    return name


def strip_prefix(name: str, prefix: str) -> str | None:
    """``rootfs/etc`` -> ``etc`` for prefix "rootfs"; None if not under the prefix."""
    if name == prefix:
        return ""
    if name.startswith(prefix + "/"):
        return name[len(prefix) + 1 :]
    return None


def lxd_architecture(name: object) -> str:
    """Map a distribution architecture name to LXD's (kernel) name."""
    text = str(name)
    return _ARCH_ALIASES.get(text, text)


def read_limited(tf: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    """Read a small member of a stream, refusing oversized ones."""
    if member.size > limit:
        raise ImageError(f"{member.name} is too large ({member.size} bytes)")
    f = tf.extractfile(member)
    if f is None:
        raise ImageError(f"{member.name} is not a regular file")
    return f.read()
