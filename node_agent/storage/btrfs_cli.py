"""The btrfs tools and the mounts of a btrfs pool, through their command lines (blocking).

Every failure is a StorageError carrying the tool's own stderr, translated here once.
A subvolume is recognised without the tools: on btrfs its root directory has inode 256.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import IO

from node_agent.storage.errors import StorageError

TIMEOUT = 600.0
SUBVOLUME_INODE = 256  # BTRFS_FIRST_FREE_OBJECTID: every subvolume's root directory
BTRFS_MAGIC = 0x9123683E
TOOLS = ("btrfs", "mkfs.btrfs")


def problem() -> str:
    """Why btrfs pools cannot be used here, or ``""``: the tools must be installed and
    the kernel must know the filesystem."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None
               and not Path("/usr/sbin", tool).exists() and not Path("/sbin", tool).exists()]
    if missing:
        return f"btrfs-progs is not installed (missing {', '.join(missing)})"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        return ""
    if "btrfs" not in filesystems.split() and not _loadable("btrfs"):
        return "the kernel has no btrfs support"
    return ""


def _loadable(module: str) -> bool:
    return subprocess.run(["modprobe", "-q", module], capture_output=True,
                          check=False).returncode == 0


def run(argv: list[str], what: str, stdin: int | IO[bytes] | None = None,
        stdout: int | IO[bytes] | None = None) -> str:
    """Run a tool; its stdout (when not redirected). StorageError with its stderr if it
    fails."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL if stdin is None else stdin,
                              stdout=subprocess.PIPE if stdout is None else stdout,
                              stderr=subprocess.PIPE, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StorageError(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        raise StorageError(f"{what} failed: {proc.stderr.decode(errors='replace').strip()[-2000:]}")
    return proc.stdout.decode(errors="replace") if stdout is None else ""


def is_subvolume(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return st.st_ino == SUBVOLUME_INODE and os.path.isdir(path) and is_btrfs(path)


def is_btrfs(path: Path) -> bool:
    """Whether ``path`` lies on a btrfs filesystem (``stat -f``)."""
    out = subprocess.run(["stat", "-f", "-c", "%t", str(path)], capture_output=True,
                         text=True, check=False)
    return out.returncode == 0 and out.stdout.strip() == f"{BTRFS_MAGIC:x}"


def create_subvolume(path: Path) -> None:
    run(["btrfs", "subvolume", "create", str(path)], f"creating subvolume {path}")


def snapshot(source: Path, target: Path, readonly: bool) -> None:
    """A snapshot of subvolume ``source`` at ``target`` (copy-on-write: instant)."""
    run(["btrfs", "subvolume", "snapshot", *(["-r"] if readonly else []), str(source),
         str(target)], f"snapshotting {source}")


def set_readonly(path: Path, readonly: bool) -> None:
    run(["btrfs", "property", "set", "-ts", str(path), "ro", "true" if readonly else "false"],
        f"setting {path} {'read-only' if readonly else 'writable'}")


def is_readonly(path: Path) -> bool:
    out = run(["btrfs", "property", "get", "-ts", str(path), "ro"], f"reading {path}")
    return out.strip() == "ro=true"


def delete_subvolume(path: Path) -> None:
    """Delete subvolume ``path`` and every subvolume nested in it (which the kernel
    refuses to leave orphaned: ENOTEMPTY). No commit: space comes back in the background."""
    try:
        run(["btrfs", "subvolume", "delete", str(path)], f"deleting subvolume {path}")
        return
    except StorageError:
        nested = nested_subvolumes(path)
        if not nested:
            raise
    for inner in nested:  # deepest first
        run(["btrfs", "subvolume", "delete", str(inner)], f"deleting subvolume {inner}")
    run(["btrfs", "subvolume", "delete", str(path)], f"deleting subvolume {path}")


def nested_subvolumes(path: Path) -> list[Path]:
    """Subvolumes below ``path`` (not itself), deepest first. Walks the tree, entering
    each directory once; a nested subvolume is a directory with inode 256."""
    found: list[Path] = []
    for dirpath, dirnames, _ in os.walk(path):
        for child in dirnames:
            full = Path(dirpath, child)
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(full).st_ino == SUBVOLUME_INODE:
                    found.append(full)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def send(snapshot_path: Path, parent: Path | None, out: int | IO[bytes]) -> None:
    """``btrfs send`` of read-only ``snapshot_path`` to ``out``: incremental against
    ``parent`` (a read-only snapshot the receiver has) when given."""
    argv = ["btrfs", "-q", "send", *(["-p", str(parent)] if parent else []), str(snapshot_path)]
    run(argv, f"sending {snapshot_path}", stdout=out)


def receive(into: Path, stream: int | IO[bytes]) -> None:
    """``btrfs receive`` of a stream from ``send`` into directory ``into``."""
    run(["btrfs", "-q", "receive", "-e", str(into)], f"receiving into {into}", stdin=stream)


def received_uuid(path: Path) -> str:
    """The ``Received UUID`` of a subvolume, "" (or "-") when it was not received whole."""
    for line in run(["btrfs", "subvolume", "show", str(path)], f"reading {path}").splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "Received UUID":
            return value.strip().strip("-")
    return ""


# mounts ---------------------------------------------------------------------------------

def mount_source(path: Path) -> str | None:
    """What is mounted at ``path`` (its device), None if it is not a mount point."""
    target = os.fsencode(str(path.resolve()))
    try:
        with open("/proc/self/mountinfo", "rb") as mounts:
            for line in mounts:
                fields = line.split()
                if _unescape(fields[4]) == target:
                    sep = fields.index(b"-")
                    return os.fsdecode(fields[sep + 2])
    except OSError:
        return None
    return None


def mounts_below(root: Path) -> list[Path]:
    """Mount points at or under ``root``, deepest first (for a teardown)."""
    base = os.fsencode(str(root.resolve()))
    found = []
    with open("/proc/self/mountinfo", "rb") as mounts:
        for line in mounts:
            point = _unescape(line.split()[4])
            if point == base or point.startswith(base + b"/"):
                found.append(Path(os.fsdecode(point)))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _unescape(field: bytes) -> bytes:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return (field.replace(b"\\040", b" ").replace(b"\\011", b"\t")
            .replace(b"\\012", b"\n").replace(b"\\134", b"\\"))


def make_loop_file(image: Path, size: int) -> None:
    """A sparse file of ``size`` bytes holding a fresh btrfs, built beside ``image`` and
    renamed into place once whole."""
    scratch = image.with_name(f".{image.name}.tmp")
    scratch.unlink(missing_ok=True)
    try:
        with open(scratch, "wb") as out:
            out.truncate(size)
        run(["mkfs.btrfs", "-q", str(scratch)], f"formatting {image}")
        os.rename(scratch, image)
    finally:
        scratch.unlink(missing_ok=True)


def mount(source: Path, target: Path, loop: bool) -> None:
    """Mount btrfs ``source`` (a loop file with ``loop``, else a block device) at
    ``target``. A loop device is released when the last mount of it goes (autoclear)."""
    options = ["-o", "loop"] if loop else []
    run(["mount", "-t", "btrfs", *options, str(source), str(target)],
        f"mounting {source} at {target}")


def unmount(target: Path) -> None:
    """Unmount ``target``; lazily if it is busy (the loop device goes once unused)."""
    try:
        run(["umount", str(target)], f"unmounting {target}")
    except StorageError:
        run(["umount", "-l", str(target)], f"unmounting {target}")
