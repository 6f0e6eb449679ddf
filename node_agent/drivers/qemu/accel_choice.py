"""Which accelerator this member's VMs start under, and how that changes at run time.

::

    mode "tcg" ------------------------------------------------> TCG
    mode "kvm" ------------------------------------------------> KVM  (no probe)
    mode "auto" --> accel.probe_kvm (once; again when it was
                    "not proven" and a VM brings a kernel) ---> KVM or TCG
    any mode but "tcg", after a VM met a broken KVM ----------> TCG, for the life of the
                                                                daemon (mark_broken)

The mode is the member setting ``core.vm_accelerator`` (``auto``, ``kvm``, ``tcg``), or,
where the member has none, ``$CORRAL_VM_ACCELERATOR`` (how a test suite pins it). Even a
pinned ``kvm`` gives way to TCG once a guest met a broken KVM: a VM is never lost to its
accelerator. The answer is kept for the life of the daemon; a new daemon probes again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from node_agent.drivers.qemu import accel as probe

log = logging.getLogger(__name__)
MODES = ("auto", "kvm", "tcg")
ENV = "CORRAL_VM_ACCELERATOR"

GuestFinder = Callable[[], probe.GuestKernel | None]


def check_mode(value: str) -> str:
    """``value`` if it is a mode ("" means auto); ValueError otherwise."""
    mode = value.strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"core.vm_accelerator must be one of {', '.join(MODES)}, "
                         f"not {value!r}")
    return mode


def default_mode() -> str:
    """The mode from the environment (a test suite's pin), else auto."""
    try:
        return check_mode(os.environ.get(ENV, ""))
    except ValueError:
        log.warning("ignoring %s=%r (want auto, kvm or tcg)", ENV, os.environ.get(ENV))
        return "auto"


class AcceleratorChoice:
    """One daemon's answer to "KVM or TCG?", thread-safe; ``current`` may block for the
    probe (tens of seconds at most), ``known`` never does."""

    def __init__(self, workdir: Path, qemu: str = probe.QEMU, mode: str | None = None,
                 find_guest: GuestFinder | None = None) -> None:
        self.workdir = workdir
        self.qemu = qemu
        self._mode = check_mode(mode) if mode is not None else default_mode()
        self._find_guest = find_guest or (lambda: None)
        self._lock = threading.Lock()  # the fields, held briefly
        self._probing = threading.Lock()  # one probe at a time; readers never wait on it
        self._answer: probe.Accel | None = None
        self._broken = ""

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Change the mode (``core.vm_accelerator``); the next ``current`` decides anew.
        A broken KVM stays broken."""
        mode = check_mode(mode)
        with self._lock:
            if mode != self._mode:
                self._mode, self._answer = mode, None

    def known(self) -> probe.Accel | None:
        """The answer if there is one yet (for ``GET /1.0``), without probing."""
        with self._lock:
            return self._decided_without_probe() or self._answer

    def current(self, guest: probe.GuestKernel | None = None) -> probe.Accel:
        """The accelerator for a VM starting now. ``guest``: that VM's kernel, which
        proves KVM when the probe had none."""
        with self._probing:
            with self._lock:
                answer = self._decided_without_probe() or self._answer
            if answer is not None and not (answer.unproven and guest is not None):
                return answer
            found = probe.probe_kvm(qemu=self.qemu, workdir=self.workdir,
                                    guest=guest or self._find_guest())
            log.info("VM accelerator: %s (%s; probe took %.1f s)", found.name, found.reason,
                     found.seconds)
            with self._lock:
                self._answer = found
                return self._decided_without_probe() or found

    def mark_broken(self, reason: str) -> None:
        """A guest met a broken KVM: TCG from now on, whatever the mode says."""
        with self._lock:
            if not self._broken:
                log.error("KVM IS BROKEN ON THIS MEMBER, VMs run under TCG from now on: %s",
                          reason)
            self._broken = reason

    def _decided_without_probe(self) -> probe.Accel | None:
        if self._broken:
            return probe.Accel("tcg", f"KVM failed a running guest: {self._broken}")
        if self._mode == "tcg":
            return probe.Accel("tcg", "core.vm_accelerator is tcg")
        if self._mode == "kvm":
            return probe.Accel("kvm", "core.vm_accelerator is kvm (not probed)")
        return None
