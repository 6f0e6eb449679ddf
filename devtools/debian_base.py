"""A Debian 12 root file system for deployment tests, built once with ``debootstrap`` and
kept outside the repository.

The Ansible test's hosts (network, mount, UTS and PID namespaces over an overlay of this
base, running sshd) and the docker-compose test's image both start from it: hosts that share
no file system with the machine, and an image built without a registry. Building takes a
minute or two (RECIPES: ~50 s for minbase); the result is cached under
``/var/cache/corral-tests`` keyed by the package list, so later runs start at once. A
half-built base is never used: it is built in a scratch directory and renamed into place
only once complete, under a lock so two test runs do not build it twice.

    python -m devtools.debian_base     # build (or find) it and print its path
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

CACHE = Path(os.environ.get("CORRAL_TEST_CACHE", "/var/cache/corral-tests"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What a corral host needs to run (the Makefile's runtime packages, less the build tools the
# wheels spare it), plus sshd and Python for Ansible, and sudo-less root.
PACKAGES = (
    "python3", "python3-venv", "openssh-server", "lxc", "busybox-static", "dnsmasq-base",
    "iptables", "iproute2", "squashfs-tools", "uidmap", "e2fsprogs", "btrfs-progs", "cpio",
    "ca-certificates", "procps", "kmod",
)
BUILD_TIMEOUT = 1200.0  # s


def key_of(packages: Sequence[str], suite: str = SUITE) -> str:
    """The cache key: a change of the package list or suite builds a new base."""
    text = "\n".join([suite, *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_base(packages: Sequence[str] = PACKAGES, cache: Path = CACHE) -> Path:
    """The path of a complete base with ``packages``, building it if there is none."""
    target = cache / f"debian-{SUITE}-{key_of(packages)}"
    if (target / ".complete").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        scratch = cache / f".build-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            subprocess.run(["debootstrap", "--variant=minbase",
                            f"--include={','.join(packages)}", SUITE, str(scratch), MIRROR],
                           check=True, timeout=BUILD_TIMEOUT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
            subprocess.run(["chroot", str(scratch), "apt-get", "clean"], check=True,
                           timeout=120, capture_output=True)
            (scratch / ".complete").write_text(f"{SUITE} {' '.join(sorted(packages))}\n")
            shutil.rmtree(target, ignore_errors=True)
            scratch.rename(target)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"debootstrap failed: {exc.stderr.decode(errors='replace')[-2000:]}"
                               ) from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


if __name__ == "__main__":
    print(ensure_base())
    sys.exit(0)
