"""Evacuation and restore of a member on a 3-member namespace cluster.

    python bench/evacuate.py [--instances 3] [--reps 3] [--cold-only] [--spares]

Launches busybox containers on m3, then times ``corral cluster evacuate m3`` (each
container stopped cleanly, its volume streamed to the member the scheduler picks, started
there) and ``corral cluster restore m3`` (all of them back), and one ``corral move``; then
the same with ``migration.stateful=true`` (each container checkpointed with CRIU, its
volume and checkpoint streamed, restored there: its processes keep running).
LXD 5.0.2 was measured on this machine with the same image by the issue's author: 7.1 s
to evacuate a member with 3 busybox containers, 7.3 s to restore it (no LXD cluster is
started by this benchmark; those figures are quoted, not measured in this run).
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools import devcluster  # noqa: E402
from devtools.harness import DaemonProcess  # noqa: E402
from node_agent.storage.topdir import spread_subdirectories  # noqa: E402

LXD_EVACUATE, LXD_RESTORE = 7.1, 7.3  # seconds, quoted from the issue (see docstring)


def timed(daemon: DaemonProcess, *args: str) -> float:
    started = time.perf_counter()
    daemon.corral(*args, timeout=300)
    return time.perf_counter() - started


def measure(m1: DaemonProcess, names: list[str], reps: int) -> tuple[float, float, float]:
    """Median evacuation, restore and single-move times."""
    evacuations, restores, moves = [], [], []
    for _ in range(reps):
        evacuations.append(timed(m1, "cluster", "evacuate", "m3", "--force"))
        restores.append(timed(m1, "cluster", "restore", "m3", "--force"))
        moves.append(timed(m1, "move", names[0], "--target", "m2", "--quiet"))
        m1.corral("move", names[0], "--target", "m3", "--quiet", timeout=300)
    return (statistics.median(evacuations), statistics.median(restores),
            statistics.median(moves))


def report(kind: str, evacuate: float, restore: float, move: float) -> None:
    print(f"{kind}:")
    print(f"  evacuate: {evacuate:.2f} s  (LXD 5.0.2, quoted: {LXD_EVACUATE} s; "
          f"ratio {evacuate / LXD_EVACUATE:.2f}; goal <= 0.25)")
    print(f"  restore:  {restore:.2f} s  (LXD 5.0.2, quoted: {LXD_RESTORE} s; "
          f"ratio {restore / LXD_RESTORE:.2f})")
    print(f"  move of one running container: {move:.2f} s")


def unpack_ms(near: Path, tries: int = 5) -> tuple[int, dict[str, list[float]]]:
    """How long this disk takes to unpack a busybox rootfs (busybox and a symlink per
    applet, as in the image) beside the cluster, as a move does (``--absolute-names``),
    each time into a new directory, the one before deleted: in a plain directory, and in
    one with ext4's top-directory flag as a pool's ``.tmp`` has (``storage/topdir.py``:
    on ext4 without a journal, creating files beside ones deleted a moment before is
    slow)."""
    with tempfile.TemporaryDirectory(dir=near) as scratch:
        tree = Path(scratch) / "tree"
        (tree / "bin").mkdir(parents=True)
        busybox = shutil.which("busybox") or "/bin/busybox"
        shutil.copy2(busybox, tree / "bin" / "busybox")
        applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for applet in applets:
            link = tree / applet
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists() and not link.is_symlink():
                link.symlink_to("/bin/busybox")
        archive = Path(scratch) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(tree), "-cf", str(archive), "."], check=True)
        times: dict[str, list[float]] = {}
        for kind in ("plain", "flagged"):
            parent = Path(scratch) / kind
            parent.mkdir()
            if kind == "flagged" and not spread_subdirectories(parent):
                continue
            for attempt in range(tries):
                into = parent / str(attempt)
                into.mkdir()
                started = time.perf_counter()
                subprocess.run(["tar", "--absolute-names", "-C", str(into), "-xf",
                                str(archive)], check=True)
                times.setdefault(kind, []).append((time.perf_counter() - started) * 1000)
                if attempt:
                    shutil.rmtree(parent / str(attempt - 1))
        return len(applets) + 1, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cold-only", action="store_true", help="skip the CRIU runs")
    parser.add_argument("--spares", action="store_true",
                        help="run the image on every member first, so spare rootfs copies "
                             "are ready and moves pre-copy onto them")
    args = parser.parse_args()
    directory = Path("/tmp") / f"corral-bench-evacuate-{secrets.token_hex(3)}"
    try:
        members = devcluster.up(3, directory)
        m1 = members[0]
        m1.corral("image", "build", "busybox", timeout=300)
        names = [f"ev{i}" for i in range(args.instances)]
        if args.spares:  # as in a fleet: every member has run the image (a spare is ready)
            for member in ("m1", "m2", "m3"):
                m1.corral("launch", "busybox", f"warm-{member}", "--target", member)
                m1.corral("delete", "--force", f"warm-{member}")
            time.sleep(2)  # the spares are copied in the background
        for name in names:
            m1.corral("launch", "busybox", name, "--target", "m3")
            if args.spares:
                time.sleep(1)
        print(f"members: 3 (network namespaces), instances on m3: {args.instances} busybox, "
              f"reps: {args.reps} (median; CLI start-up included)")
        files, times = unpack_ms(directory)
        for kind, figures in times.items():
            print(f"disk: unpacking {files} files takes {', '.join(f'{t:.0f}' for t in figures)}"
                  f" ms here ({kind} directory; each into a new one, the last deleted)")
        report("cold", *measure(m1, names, args.reps))
        if not args.cold_only:
            for name in names:
                m1.corral("config", "set", name, "migration.stateful", "true")
                m1.corral("restart", name, "--force")
            report("stateful (CRIU)", *measure(m1, names, args.reps))
    finally:
        devcluster.down(directory)
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
