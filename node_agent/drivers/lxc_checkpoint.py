"""Checkpoint and restore of running containers with CRIU, through ``lxc-checkpoint``
(the ``lxc`` binding installed here has no checkpoint API).

A checkpoint lives in ``state/`` next to the container's ``rootfs/`` on its pool, as
LXD's stateful stop keeps it, so a cold move's volume stream carries it to another
member. What CRIU needs from the container (see ``scripts/criu_probe.py``): no console
pty (``migration.stateful=true`` configures ``lxc.console.path = none``), no AppArmor
profile on hosts without AppArmor, and every process in a session led from inside the
container (a process left by ``exec`` must ``setsid``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from node_agent.drivers import lxc_config as cfg
from node_agent.drivers.base import DriverError

TIMEOUT = 120.0
INVENTORY = "inventory.img"  # CRIU's first image: a complete checkpoint has one


def criu_missing() -> str:
    """Why checkpoints cannot be taken here ("" if they can)."""
    for tool in ("criu", "lxc-checkpoint"):
        if shutil.which(tool, path=cfg.DEFAULT_PATH) is None:
            return f"{tool} is not installed (scripts/build-criu.sh builds CRIU)"
    return ""


def has_checkpoint(directory: Path) -> bool:
    return (directory / INVENTORY).is_file()


def checkpoint(lxcpath: Path, name: str, directory: Path, group: int) -> None:
    """Dump the running container into ``directory`` and stop it. On failure CRIU lets
    the container run on and ``directory`` is removed; raises DriverError with the
    cause from CRIU's log. ``group`` is the host gid of the container's root group."""
    if problem := criu_missing():
        raise DriverError(f"container {name!r}: cannot checkpoint: {problem}")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    _restrict(directory, 0o710, group)
    code, stderr = _run(["lxc-checkpoint", "-n", name, "-P", str(lxcpath), "-D",
                         str(directory), "-s"])
    if code != 0 or not has_checkpoint(directory):
        cause = _criu_errors(directory / "dump.log") or stderr
        shutil.rmtree(directory, ignore_errors=True)
        raise DriverError(f"container {name!r}: checkpoint failed (lxc-checkpoint exit "
                          f"{code}): {cause}")
    for image in directory.iterdir():
        _restrict(image, 0o640, group)


def restore(lxcpath: Path, name: str, directory: Path) -> None:
    """Start the container from the checkpoint in ``directory`` (a daemonised monitor,
    as ``lxc-start -d``); the checkpoint is kept on failure. Raises DriverError."""
    if problem := criu_missing():
        raise DriverError(f"container {name!r}: cannot restore its checkpoint: {problem}")
    code, stderr = _run(["lxc-checkpoint", "-r", "-n", name, "-P", str(lxcpath), "-D",
                         str(directory), "-d"])
    if code != 0:
        cause = _criu_errors(directory / "restore.log") or stderr
        raise DriverError(f"container {name!r}: restoring its checkpoint failed "
                          f"(lxc-checkpoint exit {code}): {cause}")


def _restrict(path: Path, mode: int, group: int) -> None:
    """The images hold the container's memory: only root and the container's root may
    read them. CRIU's restore reads some as host root before the user namespace's id
    maps are written (no capabilities then: only the owner bits apply) and others as
    the container's root (the group bits)."""
    os.chown(path, 0, group, follow_symlinks=False)
    path.chmod(mode)


def _run(argv: list[str]) -> tuple[int, str]:
    """Output to a file, not a pipe: the daemonised monitor of a restore would hold a
    pipe open until the container stops."""
    with tempfile.TemporaryFile() as err:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=err, env={"PATH": cfg.DEFAULT_PATH}, cwd="/",
                                  start_new_session=True, timeout=TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return -1, f"no answer in {TIMEOUT:.0f} s"
        except OSError as exc:
            return -1, str(exc)
        err.seek(0)
        return done.returncode, err.read().decode(errors="replace").strip()[-600:]


def _criu_errors(log: Path, limit: int = 6) -> str:
    """CRIU's error lines: where it says what it could not dump or restore."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join([line for line in lines if "Error (" in line][:limit])
