"""Following a migration to its end on the source, and the switchover in it: at QEMU's
pre-switchover pause (the guest stopped, its RAM nearly all sent) the disk mirror is
completed, then the migration continues. Driven by QEMU's events on the held second
monitor (``follow_events``), or by polling for VMs started before it existed
(``follow_polled``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node_agent.drivers.qemu import qmp
from node_agent.drivers.qemu.driver import QemuDriver
from node_agent.drivers.qemu.migration.common import (
    ACTIVE,
    MIRROR_JOB,
    NBD_NODE,
    POLL,
    PROGRESS_POLL,
    STEP_TIMEOUT,
    MigrationError,
    Progress,
    call_qmp,
    mirror_job,
    wait_until,
)
from node_agent.drivers.qemu.migration.downtime import DowntimeSchedule


def follow_polled(driver: QemuDriver, name: str, deadline: float, report: Progress,
                  schedule: DowntimeSchedule) -> tuple[dict[str, Any], int]:
    """Poll the migration to its end, raising the downtime limit pass by pass
    (``schedule``) and completing the mirror at the pre-switchover pause. Returns the
    final query-migrate reply and the bytes the mirror copied."""
    disk_bytes, switched = 0, False
    while True:
        info = call_qmp(driver, name, "query-migrate", "query-migrate")
        status = info.get("status")
        passes = int((info.get("ram") or {}).get("dirty-sync-count", 0))
        raised = schedule.on_pass(passes) if status == "active" else None
        if raised is not None:
            call_qmp(driver, name, "raising the downtime limit", "migrate-set-parameters",
                     {"downtime-limit": raised})
        if status == "completed":
            # QEMU sets the state a moment before its figures (total-time, downtime).
            if info.get("total-time") or time.monotonic() >= deadline:
                return info, disk_bytes
            time.sleep(POLL)
            continue
        if status not in ACTIVE:
            raise MigrationError(f"VM {name!r}: migration {status}: "
                                 f"{info.get('error-desc', 'no reason given')}")
        if status == "pre-switchover" and not switched:  # seen again until QEMU moves on
            switched = True
            disk_bytes = _complete_mirror(driver, name, min(deadline, time.monotonic()
                                                            + STEP_TIMEOUT))
            call_qmp(driver, name, "migrate-continue", "migrate-continue",
                     {"state": "pre-switchover"})
        job = None if switched else mirror_job(driver, name)  # the mirror copies guest writes on
        ram = info.get("ram") or {}
        report({"phase": "memory", "status": status,
                "ram_transferred": ram.get("transferred", 0), "ram_total": ram.get("total", 0),
                "ram_remaining": ram.get("remaining", 0),
                "disk_done": job.get("current-progress", 0) if job else disk_bytes,
                "disk_total": job.get("total-progress", 0) if job else disk_bytes})
        if time.monotonic() >= deadline:
            raise MigrationError(f"VM {name!r}: migration timed out ({status})")
        time.sleep(POLL)

def open_monitor(name: str, path: Path) -> qmp.Monitor:
    try:
        return qmp.Monitor(path)
    except (qmp.QmpError, qmp.QmpUnavailable) as exc:
        raise MigrationError(f"VM {name!r}: opening its migration monitor: {exc}") from exc

def _on(monitor: qmp.Monitor, name: str, doing: str, command: str,
        arguments: dict[str, Any] | None = None) -> Any:
    try:
        return monitor.execute(command, arguments)
    except (qmp.QmpError, qmp.QmpUnavailable) as exc:
        raise MigrationError(f"VM {name!r}: {doing}: {exc}") from exc

def follow_events(monitor: qmp.Monitor, name: str, deadline: float, report: Progress,
                  schedule: DowntimeSchedule) -> tuple[dict[str, Any], int]:
    """``follow_polled`` driven by QEMU's MIGRATION and MIGRATION_PASS events on a held
    monitor: the switchover starts the moment the guest stops, not at the next poll, and
    the limit rises as a pass begins; between events the migration is queried for
    progress every PROGRESS_POLL s."""
    disk_bytes, switched = 0, False
    while True:
        event = _take(monitor, lambda e: e.get("event") in ("MIGRATION", "MIGRATION_PASS"),
                      PROGRESS_POLL)
        if event is not None and event.get("event") == "MIGRATION_PASS":
            raised = schedule.on_pass(int(event.get("data", {}).get("pass", 0)))
            if raised is not None:
                _on(monitor, name, "raising the downtime limit", "migrate-set-parameters",
                    {"downtime-limit": raised})
            continue
        status = (event or {}).get("data", {}).get("status")
        if status is None:
            info = _on(monitor, name, "query-migrate", "query-migrate")
            status = info.get("status")
            ram = info.get("ram") or {}
            report({"phase": "memory", "status": status,
                    "ram_transferred": ram.get("transferred", 0),
                    "ram_total": ram.get("total", 0), "ram_remaining": ram.get("remaining", 0),
                    "disk_done": disk_bytes, "disk_total": disk_bytes})
        if status == "pre-switchover" and not switched:
            switched = True
            disk_bytes = _complete_mirror_on(monitor, name, min(deadline, time.monotonic()
                                                                + STEP_TIMEOUT))
            _on(monitor, name, "migrate-continue", "migrate-continue",
                {"state": "pre-switchover"})
        elif status == "completed":
            return _final_figures(monitor, name, deadline), disk_bytes
        elif status not in ACTIVE:
            info = _on(monitor, name, "query-migrate", "query-migrate")
            raise MigrationError(f"VM {name!r}: migration {status}: "
                                 f"{info.get('error-desc', 'no reason given')}")
        if time.monotonic() >= deadline:
            raise MigrationError(f"VM {name!r}: migration timed out ({status})")

def _take(monitor: qmp.Monitor, wanted: Callable[[dict[str, Any]], bool],
          timeout: float) -> dict[str, Any] | None:
    try:
        return monitor.take_event(wanted, timeout)
    except qmp.QmpUnavailable as exc:
        raise MigrationError(f"migration monitor: {exc}") from exc

def _final_figures(monitor: qmp.Monitor, name: str, deadline: float) -> dict[str, Any]:
    """QEMU sets the state a moment before its figures (total-time, downtime)."""
    while True:
        info: dict[str, Any] = _on(monitor, name, "query-migrate", "query-migrate")
        if info.get("total-time") or time.monotonic() >= deadline:
            return info
        time.sleep(0.002)

def _complete_mirror_on(monitor: qmp.Monitor, name: str, deadline: float) -> int:
    """``_complete_mirror`` on the held monitor, waiting for the job's event."""
    _on(monitor, name, "completing the disk mirror", "block-job-cancel",
        {"device": MIRROR_JOB})
    concluded = _take(monitor, lambda e: e.get("event") == "JOB_STATUS_CHANGE"
                      and e.get("data", {}).get("id") == MIRROR_JOB
                      and e.get("data", {}).get("status") == "concluded",
                      max(0.0, deadline - time.monotonic()))
    if concluded is None:
        raise MigrationError(f"timed out waiting for the disk mirror of VM {name!r} "
                             f"to complete")
    jobs = _on(monitor, name, "query-jobs", "query-jobs")
    job: dict[str, Any] = next((j for j in jobs if j.get("id") == MIRROR_JOB), {})
    return _release_mirror(name, job, lambda *call: _on(monitor, name, *call))

def _complete_mirror(driver: QemuDriver, name: str, deadline: float) -> int:
    """Cancel the ready mirror, which completes it (the guest is stopped: the target then
    equals the source); drop the NBD connection. Returns the bytes it copied."""
    call_qmp(driver, name, "completing the disk mirror", "block-job-cancel",
             {"device": MIRROR_JOB})

    def concluded() -> dict[str, Any] | None:
        job = mirror_job(driver, name)
        if job is None:
            raise MigrationError(f"VM {name!r}: the disk mirror vanished")
        return job if job.get("status") == "concluded" else None

    job = wait_until(f"the disk mirror of VM {name!r} to complete", deadline, concluded)
    return _release_mirror(name, job, lambda *call: call_qmp(driver, name, *call))

def _release_mirror(name: str, job: dict[str, Any], call: Callable[..., Any]) -> int:
    """After the mirror concluded: fail on its error, dismiss it and drop the NBD node
    (``call(doing, command, arguments)``). Returns the bytes it copied."""
    if job.get("error"):
        raise MigrationError(f"VM {name!r}: disk mirror failed: {job['error']}")
    call("job-dismiss", "job-dismiss", {"id": MIRROR_JOB})
    call("disconnecting the target's disk", "blockdev-del", {"node-name": NBD_NODE})
    return int(job.get("current-progress", 0))
