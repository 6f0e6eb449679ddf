"""Unpacking a rootfs into a directory without trusting the archive.

The archive may come from anyone, so it is never handed to ``extractall``: every
member is checked (no absolute or ".." names), its parent directories are
created or checked one component at a time with ``lstat`` (a symlink planted by an
earlier member can never redirect a later write out of the tree), files are
created with ``O_EXCL|O_NOFOLLOW``, device nodes are skipped (LXC gives containers
their own /dev), and owners are shifted into the container's user namespace.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

from .errors import ImageError
from .tarball import check_member, normalize, open_stream, strip_prefix

log = logging.getLogger(__name__)

_CAP_XATTR = "security.capability"


class _Extractor:
    """Writes tar members below ``dest``; directory attributes are set at the end."""

    def __init__(self, dest: Path, shift: int) -> None:
        self.dest = str(dest)
        self.shift = shift
        self.dirs: list[tuple[str, tarfile.TarInfo]] = []
        self.skipped: set[str] = set()
        self.checked_dirs: set[str] = {""}  # relative dirs verified to be real dirs

    def path(self, rel: str) -> str:
        return os.path.join(self.dest, rel) if rel else self.dest

    def add(self, tf: tarfile.TarFile, m: tarfile.TarInfo, rel: str, link: str | None) -> None:
        """Create one member at ``rel``; ``link`` is the hardlink source, already stripped."""
        self.ensure_dir(os.path.dirname(rel))
        target = self.path(rel)
        if not rel and not m.isdir():
            raise ImageError(f"the rootfs itself is not a directory in {m.name!r}")
        if m.isdir():
            self.make_dir(rel)
            self.dirs.append((rel, m))
            return
        if m.ischr() or m.isblk():
            log.warning("image: skipping device node /%s", rel)
            self.skipped.add(rel)
            return
        if not (m.isreg() or m.issym() or m.islnk() or m.isfifo()):
            log.warning("image: skipping unsupported member /%s (type %r)", rel, m.type)
            self.skipped.add(rel)
            return
        self.clear(rel)
        uid, gid = m.uid + self.shift, m.gid + self.shift
        if m.isreg():
            self.write_file(tf, m, target, uid, gid)
        elif m.issym():
            os.symlink(m.linkname, target)
            os.lchown(target, uid, gid)
            os.utime(target, (m.mtime, m.mtime), follow_symlinks=False)
        elif m.islnk():
            self.hard_link(rel, link or "")
        else:
            os.mkfifo(target, 0o600)
            os.lchown(target, uid, gid)
            os.chmod(target, m.mode & 0o7777)

    def write_file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, target: str, uid: int,
                   gid: int) -> None:
        src = tf.extractfile(m)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(target, flags, 0o600), "wb") as out:
            if src is not None:
                shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            # chown before chmod: chown clears setuid/setgid bits.
            os.fchown(out.fileno(), uid, gid)
            os.fchmod(out.fileno(), m.mode & 0o7777)
            os.utime(out.fileno(), (m.mtime, m.mtime))

    def hard_link(self, rel: str, link: str) -> None:
        if link in self.skipped:
            self.skipped.add(rel)
            return
        self.ensure_dir(os.path.dirname(link), create=False)
        source = self.path(link)
        try:
            st = os.lstat(source)
        except FileNotFoundError as exc:
            raise ImageError(f"hard link /{rel} points to missing /{link}") from exc
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"hard link /{rel} points to a directory")
        os.link(source, self.path(rel), follow_symlinks=False)

    def ensure_dir(self, rel: str, create: bool = True) -> None:
        """Make sure every component of ``rel`` is a real directory (never a symlink)."""
        if rel in self.checked_dirs:
            return
        cur = ""
        for part in rel.split("/"):
            cur = f"{cur}/{part}" if cur else part
            if cur in self.checked_dirs:
                continue
            try:
                st = os.lstat(self.path(cur))
            except FileNotFoundError:
                if not create:
                    raise ImageError(f"/{rel} does not exist in image") from None
                os.mkdir(self.path(cur), 0o755)
                os.lchown(self.path(cur), self.shift, self.shift)
            else:
                if not stat.S_ISDIR(st.st_mode):
                    raise ImageError(f"/{cur} in image is not a directory (symlink?)")
            self.checked_dirs.add(cur)

    def make_dir(self, rel: str) -> None:
        if rel in self.checked_dirs:
            return
        try:
            st = os.lstat(self.path(rel))
        except FileNotFoundError:
            os.mkdir(self.path(rel), 0o700)
        else:
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(self.path(rel))
                os.mkdir(self.path(rel), 0o700)
        self.checked_dirs.add(rel)

    def clear(self, rel: str) -> None:
        """Remove whatever is at ``rel`` so a later member replaces an earlier one."""
        target = self.path(rel)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(target)
            self.checked_dirs = {d for d in self.checked_dirs if d != rel
                                 and not d.startswith(rel + "/")}
        else:
            os.unlink(target)

    def finish(self) -> None:
        """Apply directory owners, modes and times, deepest first."""
        for rel, m in sorted(self.dirs, key=lambda d: d[0].count("/"), reverse=True):
            try:
                fd = os.open(self.path(rel), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                continue  # replaced by a later member
            try:
                os.fchown(fd, m.uid + self.shift, m.gid + self.shift)
                os.fchmod(fd, m.mode & 0o7777)
                os.utime(fd, (m.mtime, m.mtime))
            finally:
                os.close(fd)


def extract_tar(archive: Path, dest: Path, shift: int, prefix: str | None) -> None:
    """Unpack the rootfs in ``archive`` into the existing, empty directory ``dest``.

    ``prefix`` is "rootfs" for unified images (other members are ignored), None for
    a rootfs-only tarball. Raises ImageError on unsafe or inconsistent members.
    """
    os.chown(dest, shift, shift)
    os.chmod(dest, 0o755)
    ex = _Extractor(dest, shift)
    with open_stream(archive) as tf:
        for m in tf:
            name = check_member(m, prefix)
            rel = name if prefix is None else strip_prefix(name, prefix)
            if rel is None:
                continue
            link: str | None = None
            if m.islnk():
                source = normalize(m.linkname)
                link = source if prefix is None else strip_prefix(source, prefix)
                if not link:
                    raise ImageError(f"hard link {m.name!r} points outside the rootfs")
            ex.add(tf, m, rel, link)
    ex.finish()


def extract_squashfs(archive: Path, dest: Path, shift: int) -> None:
    """Unpack a squashfs rootfs into ``dest`` (which must not exist yet)."""
    tool = shutil.which("unsquashfs")
    if tool is None:
        raise ImageError("squashfs images need unsquashfs: apt-get install squashfs-tools")
    proc = subprocess.run([tool, "-n", "-d", str(dest), str(archive)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ImageError(f"unsquashfs failed: {' '.join(tail)}")
    drop_devices_and_shift(dest, shift)


def drop_devices_and_shift(dest: Path, shift: int) -> None:
    """Remove device nodes and add ``shift`` to every owner (symlinks included).

    chown clears setuid/setgid bits and file capabilities, so both are restored.
    """
    for top, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                log.warning("image: skipping device node %s", path)
                os.unlink(path)
            elif shift:
                _shift_one(path, st, shift)
    if shift:
        _shift_one(str(dest), os.lstat(dest), shift)


def _shift_one(path: str, st: os.stat_result, shift: int) -> None:
    if stat.S_ISLNK(st.st_mode):
        os.lchown(path, st.st_uid + shift, st.st_gid + shift)
        return
    caps: bytes | None = None
    if stat.S_ISREG(st.st_mode):
        try:
            caps = os.getxattr(path, _CAP_XATTR, follow_symlinks=False)
        except OSError:
            caps = None
    os.lchown(path, st.st_uid + shift, st.st_gid + shift)
    os.chmod(path, stat.S_IMODE(st.st_mode))
    if caps is not None:
        os.setxattr(path, _CAP_XATTR, caps, follow_symlinks=False)
