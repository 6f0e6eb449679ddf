"""The RAM size a VM's QEMU gets, around QEMU's lossy dirty-bitmap sync under TCG."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_agent.drivers.qemu import tcg_ram

MIB = 1 << 20
UNITS = {"K": 1 << 10, "M": MIB}


def size_of(option: str) -> int:
    return int(option[:-1]) * UNITS[option[-1]]


@given(st.integers(min_value=32 * MIB, max_value=1 << 42))
def test_a_tcg_vm_never_gets_a_size_on_qemus_lossy_fast_path(memory: int) -> None:
    ram = size_of(tcg_ram.ram_option(memory, "tcg"))
    assert ram % tcg_ram.DIRTY_WORD != 0  # QEMU syncs its dirty bits page by page
    assert ram % (8 << 10) == 0  # a size QEMU keeps as it is (it rounds up to 8 KiB)
    assert (memory >> 20 << 20) - ram == tcg_ram.TCG_TRIM  # never more than asked
    assert not tcg_ram.loses_writes(ram, "tcg", (7, 2))


@given(st.integers(min_value=32 * MIB, max_value=1 << 42))
def test_a_kvm_vm_gets_its_whole_memory(memory: int) -> None:
    assert size_of(tcg_ram.ram_option(memory, "kvm")) == memory >> 20 << 20


@pytest.mark.parametrize(("ram", "accel", "version", "loses"), [
    (256 * MIB, "tcg", (7, 2), True),  # started before the trim, on Debian 12's QEMU
    (256 * MIB, "tcg", (8, 2), True),
    (256 * MIB, "tcg", (9, 0), False),  # fixed upstream
    (256 * MIB - 8192, "tcg", (7, 2), False),
    (256 * MIB, "kvm", (7, 2), False),  # KVM tracks dirty pages itself
])
def test_which_sources_would_lose_guest_writes(ram: int, accel: str, version: tuple[int, int],
                                               loses: bool) -> None:
    assert tcg_ram.loses_writes(ram, accel, version) is loses
