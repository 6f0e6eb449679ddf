"""The images a member builds itself, by kind: ``POST /1.0/images`` with a
``{"type": "build"}`` source (corral's extension of LXD's API) lands here through the
node facade.

No image server is reachable, so corral makes its own small images. Each kind names one
recipe; ``vm`` and ``uefi`` pick its virtual-machine variants::

    busybox               busybox.build_busybox_image      unified container tarball
    busybox, vm           busybox_vm.build_busybox_vm_image  + kernel, initrd (direct boot)
    busybox, uefi (=> vm) busybox_vm.build_busybox_vm_image  GPT disk booted through OVMF

The builds are deterministic (same inputs, same fingerprint on every host), so building
twice yields the image already stored, and every member that builds gets the same one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .busybox import build_busybox_image
from .busybox_vm import build_busybox_vm_image
from .errors import ImageError

KINDS: tuple[str, ...] = ("busybox",)

Progress = Callable[[str], None]


def kind_problem(kind: object) -> str:
    """Why ``kind`` cannot be built, or ``""``: what the API checks before it starts."""
    if kind in KINDS:
        return ""
    return f"Unknown image kind {kind!r}: the kinds corral builds are {', '.join(KINDS)}"


def build(kind: str, out_dir: Path, *, vm: bool = False, uefi: bool = False,
          progress: Progress | None = None) -> Path:
    """Build the image of ``kind`` in ``out_dir`` (which must exist); return its unified
    tarball. ``uefi`` implies ``vm``. Blocking (seconds; minutes the first time a VM
    kernel is downloaded into the cache).

    Raises ImageError (400) for an unknown kind or a missing tool."""
    problem = kind_problem(kind)
    if problem:
        raise ImageError(problem)
    if vm or uefi:
        return build_busybox_vm_image(out_dir, progress=progress, uefi=uefi)
    return build_busybox_image(out_dir / f"{kind}.tar.gz", progress)
