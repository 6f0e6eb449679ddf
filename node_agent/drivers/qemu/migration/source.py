"""The source's side: mirror the disk to the target's export, migrate the RAM, and
afterwards either drop the source (``finish_source``) or run it again
(``resume_source``).

From its first QMP step until ``resume_source`` or ``finish_source``, ``migrate_out``
leaves a mark (``cmdline.OUTGOING_MARK``) in the VM's directory. QEMU carries the mirror
and the migration on by itself when the process that drives them dies (kill -9 of the
member's daemon): the mark tells whoever comes next (the agent, ``migration_leftovers``;
the next ``migrate_out``) that this QEMU holds an outgoing migration nobody follows, whose
NBD node, mirror job and TLS object would refuse the next migration, and whose guest
stays stopped for ever if it had reached the switch-over (``outgoing_left``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from node_agent.drivers.base import DriverError, InvalidState
from node_agent.drivers.qemu import cmdline as cl
from node_agent.drivers.qemu import tcg_ram
from node_agent.drivers.qemu.driver import QemuDriver
from node_agent.drivers.qemu.migration.common import (
    ACTIVE,
    DRIVE,
    MAX_BANDWIDTH,
    MIRROR_JOB,
    NBD_NODE,
    STEP_TIMEOUT,
    TLS_CREDS,
    TLS_HOSTNAME,
    Incoming,
    MigrationError,
    MigrationStats,
    Progress,
    call_qmp,
    mirror_job,
    parse_stats,
    quietly,
    wait_until,
)
from node_agent.drivers.qemu.migration.downtime import DowntimeSchedule
from node_agent.drivers.qemu.migration.switchover import (
    follow_events,
    follow_polled,
    open_monitor,
)
from node_agent.drivers.qemu.migration.tls import Credentials, drop_credentials, load_credentials


def nbd_client_args(incoming: Incoming) -> dict[str, Any]:
    """``blockdev-add`` on the source of the node writing into the target's export."""
    return {"driver": "nbd", "node-name": NBD_NODE, "export": incoming.export,
            "server": {"type": "inet", "host": incoming.host,
                       "port": str(incoming.nbd_port)},
            "tls-creds": TLS_CREDS, "tls-hostname": TLS_HOSTNAME}

def _mark(driver: QemuDriver, name: str) -> Path:
    return driver.vm_dir(name) / cl.OUTGOING_MARK

def outgoing_left(driver: QemuDriver, name: str) -> bool:
    """Whether the VM's running QEMU holds (or may hold) what an outgoing migration left:
    ``migrate_out`` began and neither ``resume_source`` nor ``finish_source`` ended it.
    Only a stat (and the pid file): cheap enough for every pass of the agent."""
    return _mark(driver, name).exists() and bool(driver._pid(name))

def migrate_out(driver: QemuDriver, name: str, incoming: Incoming, credentials: Credentials,
                downtime_ms: int = 300, progress: Progress | None = None,
                timeout: float = 600) -> MigrationStats:
    """Move the running VM's disk (overlay data only) and RAM to the prepared target, both
    over TLS with ``credentials``: a target whose certificate ``credentials.ca_pem`` did
    not sign, or that does not name ``TLS_HOSTNAME``, is refused.

    Returns once the target holds the whole VM; the source is then paused (postmigrate)
    and still exists: ``finish_source`` or ``resume_source`` is the caller's choice.
    ``progress`` receives dicts (``phase`` "disk" or "memory", ``disk_done``,
    ``disk_total``, and for memory ``status``, ``ram_transferred``, ``ram_total``,
    ``ram_remaining``). On failure the source runs again (``resume_source``) and
    MigrationError is raised. Raises InvalidState if the VM is not running."""
    try:
        schedule = DowntimeSchedule(downtime_ms)  # low first, up to downtime_ms (downtime.py)
    except ValueError as exc:
        raise MigrationError(str(exc)) from exc
    if outgoing_left(driver, name):  # a dead daemon's migration: its node names are ours
        resume_source(driver, name)
    status = driver.status(name)
    if status != "Running":
        raise InvalidState(f"cannot migrate VM {name!r}: it is {status}")
    accel = driver.running_under(name)
    incoming.check_accelerator(name, accel)
    if accel == "tcg":
        _check_dirty_tracking(driver, name)
    report = progress or (lambda _: None)
    with driver.disk_job_lock(name):  # no HA replica backup (a block job) meanwhile
        return _migrate_out(driver, name, incoming, credentials, schedule, report, timeout)


def _migrate_out(driver: QemuDriver, name: str, incoming: Incoming, credentials: Credentials,
                 schedule: DowntimeSchedule, report: Progress, timeout: float,
                 ) -> MigrationStats:
    started = time.monotonic()
    deadline = started + timeout
    _mark(driver, name).touch()
    try:
        load_credentials(driver, name, "client", credentials)
        _mirror_disk(driver, name, incoming, deadline, report)
        call_qmp(driver, name, "setting migration capabilities", "migrate-set-capabilities",
                 {"capabilities": [{"capability": "pause-before-switchover", "state": True},
                                   {"capability": "events", "state": True}]})
        call_qmp(driver, name, "setting migration parameters", "migrate-set-parameters",
                 {"downtime-limit": schedule.current, "max-bandwidth": MAX_BANDWIDTH,
                  "tls-creds": TLS_CREDS, "tls-hostname": TLS_HOSTNAME})
        parameters = call_qmp(driver, name, "query-migrate-parameters",
                              "query-migrate-parameters")
        monitor_path = driver._dir(name) / cl.MIGRATION_QMP
        if monitor_path.exists():  # held from before the migrate: no event is missed
            with open_monitor(name, monitor_path) as monitor:
                call_qmp(driver, name, f"migrate to {incoming.migration_uri}", "migrate",
                         {"uri": incoming.migration_uri})
                reply, disk_bytes = follow_events(monitor, name, deadline, report, schedule)
        else:  # a VM started before the second monitor existed: poll
            call_qmp(driver, name, f"migrate to {incoming.migration_uri}", "migrate",
                     {"uri": incoming.migration_uri})
            reply, disk_bytes = follow_polled(driver, name, deadline, report, schedule)
    except BaseException:
        _undo_source(driver, name)
        raise
    return parse_stats(reply, round((time.monotonic() - started) * 1000), disk_bytes,
                       tls=parameters.get("tls-creds") == TLS_CREDS)

def _check_dirty_tracking(driver: QemuDriver, name: str) -> None:
    """Refuse, before anything moves, a TCG VM whose QEMU would lose guest writes in a
    live migration (tcg_ram.py: started before corral trimmed its RAM)."""
    version = call_qmp(driver, name, "query-version", "query-version").get("qemu", {})
    ram = call_qmp(driver, name, "query-memory-size-summary", "query-memory-size-summary")
    if tcg_ram.loses_writes(int(ram.get("base-memory", 0)), "tcg",
                            (int(version.get("major", 0)), int(version.get("minor", 0)))):
        raise MigrationError(
            f"cannot live-migrate VM {name!r}: its QEMU (TCG, {version.get('major')}."
            f"{version.get('minor')}) would lose some of the guest's memory writes on the "
            f"way (a QEMU bug fixed in 9.0; VMs started since corral works around it): "
            f"restart it here first, or stop it and move it cold")


def _mirror_disk(driver: QemuDriver, name: str, incoming: Incoming, deadline: float,
                 report: Progress) -> None:
    """Start the mirror to the target's export and wait until it is in sync (ready)."""
    call_qmp(driver, name, f"connecting to the target's disk at {incoming.host}:"
             f"{incoming.nbd_port}", "blockdev-add", nbd_client_args(incoming))
    call_qmp(driver, name, "starting the disk mirror", "blockdev-mirror",
             {"job-id": MIRROR_JOB, "device": DRIVE, "target": NBD_NODE, "sync": "top",
              "auto-dismiss": False})

    def ready() -> bool:
        job = mirror_job(driver, name)
        if job is None or job.get("status") == "concluded":
            error = (job or {}).get("error", "the job vanished")
            raise MigrationError(f"VM {name!r}: disk mirror failed: {error}")
        report({"phase": "disk", "disk_done": job.get("current-progress", 0),
                "disk_total": job.get("total-progress", 0)})
        return job.get("status") == "ready"

    wait_until(f"the disk mirror of VM {name!r}", deadline, ready)

def resume_source(driver: QemuDriver, name: str, timeout: float = STEP_TIMEOUT) -> None:
    """After a failed migration: cancel it and the mirror if they run, drop the NBD node
    and run the VM again (``cont``). Never call it once the target has run. Raises
    InvalidState if the VM's QEMU is gone, MigrationError if it does not run again."""
    if not driver._pid(name):
        raise InvalidState(f"cannot resume VM {name!r}: its QEMU is gone")
    deadline = time.monotonic() + timeout
    if (quietly(driver, name, "query-migrate") or {}).get("status") in ACTIVE:
        quietly(driver, name, "migrate_cancel")
        wait_until(f"the migration of VM {name!r} to stop", deadline,
                   lambda: call_qmp(driver, name, "query-migrate", "query-migrate")
                   .get("status") not in ACTIVE)
    job = mirror_job(driver, name)
    if job is not None and job.get("status") != "concluded":
        quietly(driver, name, "block-job-cancel", {"device": MIRROR_JOB, "force": True})
        wait_until(f"the disk mirror of VM {name!r} to stop", deadline,
                   lambda: (mirror_job(driver, name) or {"status": "concluded"})
                   .get("status") == "concluded")
    quietly(driver, name, "job-dismiss", {"id": MIRROR_JOB})
    quietly(driver, name, "blockdev-del", {"node-name": NBD_NODE})
    drop_credentials(driver, name)
    if call_qmp(driver, name, "query-status", "query-status").get("status") != "running":
        call_qmp(driver, name, "resuming", "cont")
    _mark(driver, name).unlink(missing_ok=True)  # kept if it failed: tried again later

def _undo_source(driver: QemuDriver, name: str) -> None:
    """resume_source on a failure path: its own failure must not hide the first one."""
    try:
        resume_source(driver, name)
    except DriverError:
        pass

def finish_source(driver: QemuDriver, name: str) -> None:
    """Quit the source's QEMU after a completed migration and remove its taps (its
    directory is the caller's, through ``driver.delete``). Raises InvalidState if the
    migration has not completed (that would lose the VM), MigrationError."""
    with driver._lock(name):
        spec = driver._spec(name, running=True)
        if driver._pid(name):
            status = call_qmp(driver, name, "query-migrate", "query-migrate").get("status")
            if status != "completed":
                raise InvalidState(f"cannot drop the source of VM {name!r}: its migration "
                                   f"is {status or 'not started'}")
            driver._kill(name)
        driver._cleanup(spec)
        _mark(driver, name).unlink(missing_ok=True)
