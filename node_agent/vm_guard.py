"""Keep VMs running when KVM breaks under them.

On some hosts KVM passes every probe and then fails a guest later: QEMU stops the guest
in run state ``internal-error`` (``KVM internal error`` on its stderr), or dies. Each
second, every VM started under KVM is looked at (one short QMP call each; nothing when
no VM runs under KVM); one that met a broken KVM marks KVM unusable on this member
(logged loudly) and is started again under TCG, with the same disk, in a few seconds.
Nothing is committed: the VM's desired state (running) never changed.
"""

from __future__ import annotations

import asyncio
import logging

from node_agent.drivers.base import DriverError
from node_agent.drivers.qemu import QemuDriver

log = logging.getLogger(__name__)
CHECK_SECONDS = 1.0


def rescue_vms(driver: QemuDriver) -> list[str]:
    """Restart under TCG each VM that met a broken KVM; the names restarted (blocking)."""
    rescued = []
    for name in driver.names():
        reason = driver.accelerator_failure(name)
        if not reason:
            continue
        log.error("VM %s met a broken KVM (%s): starting it again under TCG", name, reason)
        try:
            driver.restart_under_tcg(name, reason)
        except DriverError as exc:
            log.error("VM %s could not be started again under TCG: %s", name, exc)
            continue
        rescued.append(name)
    return rescued


async def guard_vms(driver: QemuDriver, period: float = CHECK_SECONDS) -> None:
    """``rescue_vms`` every ``period`` s, off the event loop, until cancelled."""
    while True:
        await asyncio.sleep(period)
        try:
            await asyncio.to_thread(rescue_vms, driver)
        except Exception as exc:  # noqa: BLE001 - the next round looks again
            log.warning("checking VMs for a broken KVM failed: %s", exc)
