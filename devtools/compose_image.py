"""The image of docker-compose.test.yml's members, built locally since no registry is
reachable here.

1. ``corral-base:bookworm-KEY``: the cached debootstrap tree (``devtools.debian_base``)
   imported with ``docker import`` (KEY is its package-list key);
2. wheels of corral and its dependencies built on the host with this Python's pip
   (``pip wheel``), from a clean copy of the checkout's files (a stale ``build/`` of
   setuptools could otherwise slip deleted modules into the wheel);
3. ``deploy/compose/Dockerfile`` installs them offline (``pip install --no-index``) into
   ``/opt/corral`` and adds the entrypoint.

The image is tagged ``corral-compose:HASH``, HASH a digest of everything that goes into it
(the base key, the project's files, the Dockerfile and entrypoint), so a rerun on the same
sources finds it and builds nothing; it is also tagged ``corral-compose:latest``, the
compose file's default. Older ``corral-compose`` tags are removed after a build.

    DOCKER_HOST=... python -m devtools.compose_image   # build (or find) it, print its tag
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from devtools import debian_base
from devtools.dockerd import DOCKER, SOCKET, SYSTEM_SOCKET, DockerError, Engine, answers

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = "corral-compose"
CONTEXT = Path("deploy/compose")
CONTEXT_FILES = ("Dockerfile", "entrypoint.sh")
# What the wheel is built from: pyproject.toml's packages (tool.setuptools.packages.find).
PACKAGE_DIRS = ("corral_cli", "cluster", "node_agent", "scheduler", "simulator",
                "corral_shared", "devtools")
BUILD_TIMEOUT = 900.0  # s


def project_files(root: Path = ROOT) -> list[Path]:
    """The files the wheel is made of, relative to ``root``, sorted: pyproject.toml and
    the packages' files that git tracks or would track (not ignored)."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard", "--", "pyproject.toml", *PACKAGE_DIRS],
                         capture_output=True, check=True, timeout=60).stdout
    names = {n for n in out.decode().split("\0") if n}
    return sorted(Path(n) for n in names if (root / n).is_file())


def content_tag(base_key: str, files: Iterable[tuple[str, bytes]]) -> str:
    """The image tag: a digest of the base key and every (name, content) that goes into
    the image, in a canonical order. Pure, so a change of any byte or name changes it."""
    digest = hashlib.sha256(f"base {base_key}\n".encode())
    for name, data in sorted(files):
        digest.update(f"{len(name)}:{name}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def _inputs(root: Path) -> list[tuple[str, bytes]]:
    files = [(str(p), (root / p).read_bytes()) for p in project_files(root)]
    files += [(str(CONTEXT / f), (root / CONTEXT / f).read_bytes()) for f in CONTEXT_FILES]
    return files


def has_image(engine: Engine, ref: str) -> bool:
    return engine.docker("image", "inspect", ref, check=False).returncode == 0


def import_base(engine: Engine) -> str:
    """``corral-base:bookworm-KEY`` from the cached debootstrap tree (built if missing)."""
    key = debian_base.key_of(debian_base.PACKAGES)
    ref = f"corral-base:{debian_base.SUITE}-{key}"
    if has_image(engine, ref):
        return ref
    base = debian_base.ensure_base()
    tar = subprocess.Popen(["tar", "-C", str(base), "-c", "."], stdout=subprocess.PIPE)
    try:
        imported = subprocess.run([DOCKER, "import", "-", ref], stdin=tar.stdout,
                                  env=engine.env(), capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT, check=False)
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait(timeout=60)
    if imported.returncode != 0 or tar.returncode != 0:
        raise DockerError(f"docker import of {base} failed: {imported.stderr.strip()}")
    return ref


def build_wheels(root: Path, files: Iterable[Path], into: Path) -> None:
    """Wheels of the project (from a copy of ``files``) and of its dependencies."""
    with tempfile.TemporaryDirectory(prefix="corral-src-") as tmp:
        for name in files:
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, Path(tmp) / name)
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet",
                               "--disable-pip-version-check", tmp, "-w", str(into)],
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                              check=False)
    if proc.returncode != 0:
        raise DockerError(f"pip wheel failed: {proc.stderr.strip()[-2000:]}")


def ensure_image(engine: Engine, root: Path = ROOT) -> str:
    """The member image for the sources in ``root``: found by its content tag, or built.
    Returns ``corral-compose:HASH``; DockerError if a step fails."""
    tag = f"{REPOSITORY}:{content_tag(debian_base.key_of(debian_base.PACKAGES), _inputs(root))}"
    if not has_image(engine, tag):
        base = import_base(engine)
        with tempfile.TemporaryDirectory(prefix="corral-image-") as tmp:
            context = Path(tmp)
            for name in CONTEXT_FILES:
                shutil.copy2(root / CONTEXT / name, context / name)
            build_wheels(root, project_files(root), context / "wheels")
            # No network in build steps: everything is in the context (and there is no
            # default bridge on the private engine).
            engine.docker("build", "--network", "none", "--build-arg", f"BASE={base}",
                          "-t", tag, str(context), timeout=BUILD_TIMEOUT)
        _drop_other_tags(engine, tag)
    engine.docker("tag", tag, f"{REPOSITORY}:latest")
    return tag


def _drop_other_tags(engine: Engine, keep: str) -> None:
    listed = engine.docker("image", "ls", REPOSITORY, "--format",
                           "{{.Repository}}:{{.Tag}}", check=False).stdout.split()
    stale = [ref for ref in listed if ref not in (keep, f"{REPOSITORY}:latest")]
    if stale:
        engine.docker("image", "rm", *stale, check=False)
    engine.docker("image", "prune", "-f", check=False)


def main() -> int:
    """Build (or find) the image on the engine ``DOCKER_HOST`` names, else the private
    one (``python -m devtools.dockerd start``) or the system's, and print its tag."""
    hosts = [os.environ.get("DOCKER_HOST"), f"unix://{SOCKET}", f"unix://{SYSTEM_SOCKET}"]
    for host in hosts:
        if host and answers(host):
            print(ensure_image(Engine(host)))
            return 0
    print("no Docker engine answers: start one (python -m devtools.dockerd start)",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
