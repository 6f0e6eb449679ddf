"""The RAM size a VM's QEMU gets, shaped around a QEMU bug that corrupts TCG guests that
migrate live.

QEMU before 9.0 (Debian 12 ships 7.2) syncs the migration's dirty bitmap of a RAM block
whose size is a multiple of 256 KiB (one 64-bit word of the bitmap: 64 pages of 4 KiB) on
a fast path that clears the dirty bits without resetting TCG's TLB. A guest store through
a TLB entry made before the sync then marks nothing dirty, the page is never sent again,
and the target runs on with an old copy of it: a kernel oops, a double fault, a hang or a
reboot shortly after the switch-over (upstream commit 03bfc2188f, "physmem: Fix migration
dirty bitmap coherency with TCG memory access"). It was seen here on about one migration
in ten, most often on a VM whose earlier migration had been cancelled; KVM tracks dirty
pages itself and is not affected.

Every QEMU size a VM gets from ``limits.memory`` is a whole number of MiB, so a multiple
of 256 KiB. Under TCG the VM therefore gets ``TCG_TRIM`` less, which keeps QEMU on the
slow path (the one that resets the TLB) at no cost a guest notices; and a TCG VM whose
QEMU has the bug and was started without the trim is not migrated live at all.
"""

from __future__ import annotations

DIRTY_WORD = 64 * 4096  # bytes of guest RAM one word of QEMU's dirty bitmap covers
TCG_TRIM = 8 << 10  # QEMU rounds -m up to 8 KiB: the smallest step it keeps
FIXED_IN = (9, 0)  # the first QEMU release with the fix


def ram_option(memory: int, accel: str) -> str:
    """The ``-m`` value for a VM of ``memory`` bytes (whole MiB, at least one) under
    ``accel``: under TCG, ``TCG_TRIM`` less."""
    mib = max(1, memory >> 20)
    if accel == "tcg":
        return f"{(mib << 10) - (TCG_TRIM >> 10)}K"
    return f"{mib}M"


def loses_writes(ram_bytes: int, accel: str, qemu_version: tuple[int, int]) -> bool:
    """Whether a live migration out of a QEMU of ``qemu_version`` (major, minor), running
    under ``accel`` with ``ram_bytes`` of guest RAM, can lose the guest's writes."""
    return accel == "tcg" and qemu_version < FIXED_IN and ram_bytes % DIRTY_WORD == 0
