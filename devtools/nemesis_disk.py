"""On-disk faults for a dev cluster member (``corral dev-cluster corrupt|disk``).

Companion of ``devtools.nemesis`` (network and process faults); same rules: members are
found through ``devcluster.json``, errors are ``NemesisError`` with a message that says
what to do, and the functions serve both people and the chaos suite.

- ``corrupt``: on a *stopped* member, damage its Raft journal (``raft/journal``, every
  record CRC-checked) or its snapshot (``raft/snapshot``): ``flip`` inverts up to 4 KiB in
  the middle of the file (a bad sector), ``truncate`` cuts the file at its middle (a lost
  tail). A running member would keep its good copy in memory and overwrite the damage,
  so a running member is refused; start it afterwards with ``dev-cluster start``.
- ``attach_disk`` / ``fill_disk`` / ``free_disk`` / ``detach_disk``: a small ext4 file
  system in a loop device, mounted over one member's Raft directory, so that the
  member's journal and snapshot writes meet ENOSPC when it is full. Attach and detach
  need the member stopped: its daemon runs in a mount namespace of its own, copied from
  the host's when it starts (``devtools.netns.enter_argv``), so only a mount made before
  the start is seen by it, and the journal's file descriptors must not straddle the
  swap. Attach copies the directory's contents into the new file system; detach copies
  them back. Fill and free work on a running member (the file system is the same one in
  both namespaces). ``-m 0``: ext4 keeps no blocks for root, which the daemon is.
  A loop file system rather than a size-limited tmpfs: it is a real block file system
  with the journal's fdatasync semantics, and loop devices exist here.

The attached disk is recorded in the member's ``devcluster.json`` entry (``disk``), so
separate CLI calls find it; ``devcluster.down`` unmounts one left behind (its contents
are then lost with the rest of the dev cluster).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from devtools.devcluster import read_state, write_state
from devtools.nemesis import Member, NemesisError, members_of, pick, running
from devtools.netns import NetnsError, run

FILES = {"journal": "journal", "snapshot": "snapshot"}
HOWS = ("flip", "truncate")
FLIP_BYTES = 4096
FILLER = ".nemesis-fill"
DISK_MIB = 32


# ---- pure parts -----------------------------------------------------------------------

def damage(data: bytes, how: str) -> bytes:
    """``data`` damaged in its middle: ``flip`` inverts up to ``FLIP_BYTES`` bytes
    (at most a quarter of the file) centred on the middle; ``truncate`` keeps the
    first half. Always differs from ``data`` (NemesisError for an empty file)."""
    if not data:
        raise NemesisError("the file is empty: nothing to damage")
    if how == "truncate":
        return data[:len(data) // 2]
    if how != "flip":
        raise NemesisError(f"unknown damage {how!r}: one of {', '.join(HOWS)}")
    size = max(1, min(FLIP_BYTES, len(data) // 4))
    start = max(0, len(data) // 2 - size // 2)
    flipped = bytes(b ^ 0xFF for b in data[start:start + size])
    return data[:start] + flipped + data[start + size:]


# ---- corruption --------------------------------------------------------------------------

def _member(directory: Path, name: str) -> Member:
    return pick(members_of(read_state(directory.resolve())), [name])[0]


def _stopped(directory: Path, name: str, what: str) -> Member:
    if running(directory, name):
        raise NemesisError(f"{name} is running: corral dev-cluster kill {name} before {what}")
    return _member(directory, name)


def has_file(directory: Path, name: str, file: str) -> bool:
    """Whether member ``name`` has a ``journal`` or ``snapshot`` file to damage."""
    return (_member(directory, name).root / "raft" / FILES[file]).is_file()


def corrupt(directory: Path, name: str, file: str = "journal", how: str = "flip") -> str:
    """Damage a stopped member's journal or snapshot (see the module docstring);
    returns what was done, e.g. ``flipped 4096 bytes at 81920 of m2/raft/journal``."""
    if file not in FILES:
        raise NemesisError(f"unknown file {file!r}: one of {', '.join(FILES)}")
    member = _stopped(directory, name, "corrupting its state")
    path = member.root / "raft" / FILES[file]
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise NemesisError(f"{name} has no {file} yet ({path})") from exc
    damaged = damage(data, how)
    with open(path, "r+b") as out:  # in place, as a bad disk would: no rename
        out.write(damaged)
        out.truncate(len(damaged))
        out.flush()
        os.fsync(out.fileno())
    where = f"{name}/raft/{FILES[file]}"
    if how == "truncate":
        return f"truncated {where} from {len(data)} to {len(damaged)} bytes"
    changed = next(i for i, (a, b) in enumerate(zip(data, damaged, strict=True)) if a != b)
    size = max(1, min(FLIP_BYTES, len(data) // 4))
    return f"flipped {size} bytes at {changed} of {where} ({len(data)} bytes)"


# ---- full disk ---------------------------------------------------------------------------

def _raft_dir(member: Member) -> Path:
    return member.root / "raft"


def _set_disk(directory: Path, name: str, record: dict[str, str] | None) -> None:
    state = read_state(directory.resolve())
    for entry in state["members"]:
        if entry["name"] == name:
            if record is None:
                entry.pop("disk", None)
            else:
                entry["disk"] = record
    write_state(directory.resolve(), state)


def _disk_of(directory: Path, name: str) -> dict[str, str] | None:
    for entry in read_state(directory.resolve()).get("members", []):
        if entry["name"] == name:
            found = entry.get("disk")
            return dict(found) if found else None
    return None


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point in this (the host's) mount namespace."""
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == target for line in mounts)


def _copy_into(source: Path, target: Path) -> None:
    """Every file and directory of ``source`` into ``target`` (modes and times kept)."""
    for item in source.iterdir():
        if item.name in (FILLER, "lost+found"):
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target / item.name)


def attach_disk(directory: Path, name: str, size_mib: int = DISK_MIB) -> Path:
    """A ``size_mib`` MiB loop ext4 mounted over a stopped member's Raft directory, with
    the directory's contents; returns the image file. Undone by ``detach_disk``."""
    member = _stopped(directory, name, "attaching a disk")
    if _disk_of(directory, name):
        raise NemesisError(f"{name} already has a disk: corral dev-cluster disk {name} detach")
    raft = _raft_dir(member)
    image = directory.resolve() / f".{name}-raft.img"
    staging = directory.resolve() / f".{name}-raft.mnt"
    try:
        with open(image, "wb") as out:
            out.truncate(size_mib * 2**20)
        run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)])
        staging.mkdir(exist_ok=True)
        run(["mount", "-o", "loop", str(image), str(staging)])
        try:
            _copy_into(raft, staging)
        finally:
            run(["umount", str(staging)])
        run(["mount", "-o", "loop", str(image), str(raft)])
    except (NetnsError, OSError) as exc:
        with contextlib.suppress(NetnsError):
            if is_mounted(staging):
                run(["umount", "-l", str(staging)])
        image.unlink(missing_ok=True)
        raise NemesisError(f"cannot attach a disk to {name}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            staging.rmdir()
    _set_disk(directory, name, {"image": str(image), "mount": str(raft)})
    return image


def fill_disk(directory: Path, name: str) -> int:
    """Fill the member's attached disk to the last block; returns the bytes written."""
    record = _disk_of(directory, name)
    if not record:
        raise NemesisError(f"{name} has no disk: corral dev-cluster disk {name} attach")
    written = 0
    with open(Path(record["mount"]) / FILLER, "ab") as out:
        for chunk in (2**20, 2**12, 2**9, 1):
            block = b"\0" * chunk
            while True:
                try:
                    written += os.write(out.fileno(), block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise NemesisError(f"filling {name}'s disk: {exc}") from exc
                    break
        with contextlib.suppress(OSError):
            os.fsync(out.fileno())
    return written


def free_disk(directory: Path, name: str) -> bool:
    """Remove what ``fill_disk`` wrote; whether there was anything."""
    record = _disk_of(directory, name)
    if not record:
        return False
    filler = Path(record["mount"]) / FILLER
    existed = filler.exists()
    filler.unlink(missing_ok=True)
    return existed


def detach_disk(directory: Path, name: str) -> bool:
    """Unmount a stopped member's attached disk and copy its contents back into the
    Raft directory; whether there was a disk. Idempotent."""
    record = _disk_of(directory, name)
    if not record:
        return False
    _stopped(directory, name, "detaching its disk")
    mount, image = Path(record["mount"]), Path(record["image"])
    saved = directory.resolve() / f".{name}-raft.saved"
    try:
        if is_mounted(mount):
            free_disk(directory, name)
            shutil.rmtree(saved, ignore_errors=True)
            saved.mkdir()
            _copy_into(mount, saved)
            run(["umount", str(mount)])
            for item in list(mount.iterdir()):
                if item.is_dir():
                    shutil.rmtree(item)
                else:
                    item.unlink()
            _copy_into(saved, mount)
    except (NetnsError, OSError) as exc:
        raise NemesisError(f"cannot detach {name}'s disk: {exc} (copy in {saved})") from exc
    shutil.rmtree(saved, ignore_errors=True)
    image.unlink(missing_ok=True)
    _set_disk(directory, name, None)
    return True
