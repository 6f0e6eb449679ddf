"""The target's side: a paused QEMU waiting for the migration, its disk exported over NBD
for the source's mirror; then run it (``finish_incoming``) or undo it all
(``abort_incoming``).

Until one of those two, the VM's directory holds a mark (``cmdline.INCOMING_MARK``): if
this member's daemon dies and misses the call, whoever comes next knows that this paused
QEMU waits for a word nobody will send, or that its files are left over from a QEMU that
exited when the source gave up (``incoming_left``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from node_agent.drivers.base import DriverError, InstanceDefinition, InvalidState
from node_agent.drivers.qemu import cmdline as cl
from node_agent.drivers.qemu import qmp
from node_agent.drivers.qemu.driver import QemuDriver, remove_trees
from node_agent.drivers.qemu.migration.common import (
    ACTIVE,
    DRIVE,
    EXPORT,
    EXPORT_ID,
    STEP_TIMEOUT,
    TLS_CREDS,
    Incoming,
    MigrationError,
    call_qmp,
    free_port,
    quietly,
    wait_until,
)
from node_agent.drivers.qemu.migration.tls import Credentials, drop_credentials, load_credentials


def nbd_server_args(host: str, port: int) -> dict[str, Any]:
    """``nbd-server-start`` on the target: TLS only (QEMU then refuses plain clients)."""
    return {"addr": {"type": "inet", "data": {"host": host, "port": str(port)}},
            "tls-creds": TLS_CREDS}

def prepare_incoming(driver: QemuDriver, definition: InstanceDefinition,
                     listen_host: str, credentials: Credentials) -> Incoming:
    """Define the VM here (as ``define``: a new overlay on the same image), create its taps
    and start its QEMU paused, waiting for the migration on ``listen_host``; export its disk
    there over NBD (writable) for the source's mirror. Both listen for TLS only, with
    ``credentials``: a source whose certificate ``credentials.ca_pem`` did not sign is
    refused. On failure nothing is left behind. Raises InvalidState if the VM (its
    directory or its volume) exists here, InvalidConfig, MigrationError."""
    name = cl.check_name(definition.name)
    volume = Path(definition.volume or driver.vmpath / name)
    if (driver.vmpath / name).exists() or volume.exists():
        raise InvalidState(f"cannot receive VM {name!r}: it already exists on this host")
    try:
        driver.define(definition)
        with driver._lock(name):
            driver._start(name, incoming=True)
        (driver.vm_dir(name) / cl.INCOMING_MARK).touch()
        load_credentials(driver, name, "server", credentials)
        call_qmp(driver, name, "setting migration parameters", "migrate-set-parameters",
                 {"tls-creds": TLS_CREDS})
        nbd_port = _export_disk(driver, name, listen_host)
        migration_port = free_port(listen_host)
        incoming = Incoming(listen_host, migration_port, nbd_port, EXPORT,
                            driver.running_under(name))
        call_qmp(driver, name, "migrate-incoming", "migrate-incoming",
                 {"uri": incoming.migration_uri})
    except BaseException:
        try:
            abort_incoming(driver, name, volume)
        except DriverError:
            pass  # the first failure is the one to report
        raise
    return incoming

def _export_disk(driver: QemuDriver, name: str, host: str) -> int:
    """Serve the VM's disk (its format node, so the source writes guest-visible data)."""
    devices = call_qmp(driver, name, "query-block", "query-block")
    nodes = [d.get("inserted", {}).get("node-name") for d in devices if d.get("device") == DRIVE]
    if not nodes or not nodes[0]:
        raise MigrationError(f"VM {name!r}: no disk {DRIVE!r} in query-block: {devices!r}")
    for attempt in range(3):  # the free port may be taken before QEMU binds it
        port = free_port(host)
        try:
            driver._qmp(name, "nbd-server-start", nbd_server_args(host, port))
            break
        except qmp.QmpError as exc:
            if attempt == 2:
                raise MigrationError(f"VM {name!r}: nbd-server-start on {host}: "
                                     f"{exc}") from exc
        except qmp.QmpUnavailable as exc:
            raise MigrationError(f"VM {name!r}: nbd-server-start: {exc}") from exc
    call_qmp(driver, name, "exporting its disk", "block-export-add",
             {"type": "nbd", "id": EXPORT_ID, "node-name": nodes[0], "name": EXPORT,
              "writable": True})
    return port

LOADING = ACTIVE - {"setup"}  # an incoming migration's states once the source has connected

def finish_incoming(driver: QemuDriver, name: str, timeout: float = STEP_TIMEOUT) -> None:
    """Stop the NBD server and run the migrated VM; from now on it is an ordinary VM of
    this driver. Call it only after ``migrate_out`` returned on the source: QEMU here may
    still be loading the last of what the source sent (the source says "completed" once
    it has sent it all), and that is waited for. Raises InvalidState if no migration came
    or it failed here, MigrationError."""
    if not driver._pid(name):
        raise InvalidState(f"cannot finish the migration of VM {name!r}: it is not running")

    def arrived() -> bool:
        state = call_qmp(driver, name, "query-migrate", "query-migrate")
        status = call_qmp(driver, name, "query-status", "query-status").get("status")
        if state.get("status") == "completed" and status != "inmigrate":
            return True
        if state.get("status") in LOADING or (state.get("status") == "completed"
                                             and status == "inmigrate"):
            return False  # "setup" is not here: nothing has come
        raise InvalidState(f"cannot finish the migration of VM {name!r}: it is "
                           f"{state.get('status', 'not started')} (run state {status})")

    deadline = time.monotonic() + timeout
    wait_until(f"VM {name!r} to load what the source sent", deadline, arrived)
    quietly(driver, name, "nbd-server-stop")  # closes its exports too
    drop_credentials(driver, name)
    call_qmp(driver, name, "cont", "cont")
    wait_until(f"VM {name!r} to run", deadline,
               lambda: call_qmp(driver, name, "query-status", "query-status")
               .get("status") == "running")
    (driver.vm_dir(name) / cl.INCOMING_MARK).unlink(missing_ok=True)

def incoming_left(driver: QemuDriver, name: str) -> bool:
    """Whether the VM was made here for an incoming migration that neither
    ``finish_incoming`` nor ``abort_incoming`` ended (a stat). Its QEMU may have gone:
    an incoming QEMU exits when the source cancels, leaving the VM's files behind."""
    return (driver.vm_dir(name) / cl.INCOMING_MARK).exists()

def keep_incoming(driver: QemuDriver, name: str) -> None:
    """Keep a VM whose incoming QEMU is gone as an ordinary, stopped VM of this driver
    (the migration had been committed: its disk and definition are the VM's now)."""
    if driver._pid(name):
        raise InvalidState(f"VM {name!r} still waits for its migration: finish it")
    (driver.vm_dir(name) / cl.INCOMING_MARK).unlink(missing_ok=True)

def abort_incoming(driver: QemuDriver, name: str, volume: Path | None = None) -> None:
    """Undo ``prepare_incoming``: kill its QEMU, remove its taps, its volume (the one its
    spec names, else ``volume``) and its directory (also half-made ones). Never raises
    NotFound."""
    directory = driver.vmpath / cl.check_name(name)
    with driver._lock(name):
        try:
            spec = driver._spec(name, running=True)
        except DriverError:  # not defined, or an unreadable config: remove what is there
            spec = None
        if spec is not None:
            driver._kill(name)
            driver._cleanup(spec)
            volume = Path(spec.volume)
        remove_trees(name, (volume or directory, directory), MigrationError)
