"""Live migration of a running VM to another host, without shared storage.

Both hosts have the VM's image unpacked (the same backing file), so only the data of the
VM's overlay ``root.qcow2`` moves, next to its RAM and device state::

    TARGET                                     SOURCE (the VM runs)
    prepare_incoming
      define (new overlay, same backing,
        in the target's volume directory)
      taps, QEMU -S -incoming defer
      object-add tls-creds-x509 (server),
        migrate-set-parameters tls-creds
      nbd-server-start (tls-creds),
        block-export-add (the disk, writable)
      migrate-incoming tcp:HOST:PORT
                        --- Incoming (JSON) --->  migrate_out
                                                    object-add tls-creds-x509 (client)
                                                    blockdev-add an nbd node -> the export
                                                      (tls-creds, tls-hostname)
                                                    blockdev-mirror sync=top (overlay only),
                                                      wait for the job to be ready
                                                    migrate (pause-before-switchover,
                                                      tls-creds, tls-hostname)
                                                      poll until pre-switchover: the guest
                                                      is stopped, RAM nearly all sent
                                                    block-job-cancel of the ready mirror:
                                                      the last dirty blocks are copied
                                                    migrate-continue, poll until completed
                                                  (source paused: postmigrate)
    finish_incoming: nbd-server-stop, cont        finish_source: quit, taps removed
    abort_incoming: kill, taps, directories       resume_source: cancel all, cont

Both streams (NBD and RAM) are TLS with mutual authentication (GnuTLS in QEMU): each side
gets :class:`Credentials`, a certificate and key of its own and the CA certificate the
peer's must chain to, and refuses a peer whose certificate it did not sign (the source also
checks that the target's names ``TLS_HOSTNAME``). The files live in the VM's directory
(``migration-tls/``, 0700, files 0600) only while ``object-add`` reads them; the object is
deleted when the migration ends or is undone (``finish_incoming``, ``resume_source``;
``abort_incoming`` and ``finish_source`` kill the QEMU). A peer with the wrong certificate
fails the handshake: the mirror's ``blockdev-add`` (the first connection) fails and the
source runs on.

Why ``pause-before-switchover``: once the RAM is sent QEMU inactivates the source's disks
and hands over; the mirror, still copying the guest's last writes in the background,
would then write through an inactive node. Pausing before the switch-over lets the mirror
finish first, while the guest is stopped, so the target's disk equals the source's at the
moment its RAM was frozen. The reported downtime includes that last disk copy.

The target stays paused (``-S``) after the migration: nothing runs it until
``finish_incoming``, which the caller issues once the cluster committed the move. Until
then a failure is undone by ``abort_incoming`` on the target and ``resume_source`` on the
source (``migrate_out`` runs the latter itself before raising).

Every function blocks (worker threads) and every QMP wait has a deadline. Errors are
:class:`MigrationError` (a ``DriverError``, QEMU's own text in its message), ``NotFound``
and ``InvalidState``.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from node_agent.drivers.base import DriverError, InstanceDefinition, InvalidState
from node_agent.drivers.qemu import cmdline as cl
from node_agent.drivers.qemu import qmp
from node_agent.drivers.qemu.driver import QemuDriver, remove_trees

DRIVE = "root"  # the -drive id in cmdline.qemu_argv
EXPORT = "root"  # the NBD export's name on the target
EXPORT_ID = "corral-migration"
MIRROR_JOB = "corral-migration"
NBD_NODE = "corral-migration-nbd"
TLS_CREDS = "corral-migration-tls"  # the tls-creds-x509 object, on both sides
TLS_DIR = "migration-tls"  # in the VM's directory, only while QEMU loads it
TLS_HOSTNAME = "corral-migration"  # a DNS SAN the target's certificate must carry
# RFC 7919's ffdhe2048 group (PKCS#3). Without a dh-params.pem a server tls-creds-x509
# generates DH parameters at object-add: 50-350 ms here, in the prepare, for a group TLS
# 1.3 (ECDHE) does not even use.
FFDHE2048_PEM = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""
MAX_BANDWIDTH = 1 << 40  # bytes/s: unlimited in practice (QEMU 7.2 defaults to 32 MiB/s)
POLL = 0.02  # s between query-* polls (the guest is stopped while we poll pre-switchover)
PROGRESS_POLL = 0.05  # s between progress queries while a migration follows its events
STEP_TIMEOUT = 60.0  # s for one step that only waits on QEMU (a cancel, a mirror drain)
# query-migrate statuses of a migration still under way.
ACTIVE = frozenset({"setup", "active", "pre-switchover", "device", "wait-unplug",
                    "cancelling", "postcopy-active", "postcopy-paused",
                    "postcopy-recover"})

Progress = Callable[[dict[str, Any]], None]


class MigrationError(DriverError):
    """A live migration step failed (QEMU's message included)."""


@dataclass(frozen=True)
class Credentials:
    """One side's TLS identity for the migration's streams: its certificate and key, and
    ``ca_pem``, what the peer's certificate must chain to (the peer is refused otherwise).
    The target's certificate must name ``TLS_HOSTNAME``: the source checks that name, not
    the address, so the same certificate serves on any address. QEMU refuses a CA
    certificate as its own, so these are leaves."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)


def write_credentials(vm_dir: Path, endpoint: str, credentials: Credentials) -> Path:
    """The directory ``tls-creds-x509`` reads for ``endpoint`` ("server" on the target,
    "client" on the source), made afresh in ``vm_dir``: 0700, its files 0600; a server's
    gets fixed DH parameters (QEMU would spend up to a third of a second making some)."""
    if endpoint not in ("server", "client"):
        raise MigrationError(f"invalid TLS endpoint {endpoint!r}")
    directory = vm_dir / TLS_DIR
    shutil.rmtree(directory, ignore_errors=True)  # a crashed migration's
    directory.mkdir(mode=0o700)
    directory.chmod(0o700)  # whatever the umask
    files = {"ca-cert.pem": credentials.ca_pem, f"{endpoint}-cert.pem": credentials.cert_pem,
             f"{endpoint}-key.pem": credentials.key_pem}
    if endpoint == "server":
        files["dh-params.pem"] = FFDHE2048_PEM
    for file, data in files.items():
        fd = os.open(directory / file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    return directory


def tls_object(directory: Path, endpoint: str) -> dict[str, Any]:
    """``object-add`` arguments of the credentials: the peer must present a certificate
    that ``ca-cert.pem`` signed (``verify-peer``), the server as well as the client."""
    return {"qom-type": "tls-creds-x509", "id": TLS_CREDS, "dir": str(directory),
            "endpoint": endpoint, "verify-peer": True}


def nbd_server_args(host: str, port: int) -> dict[str, Any]:
    """``nbd-server-start`` on the target: TLS only (QEMU then refuses plain clients)."""
    return {"addr": {"type": "inet", "data": {"host": host, "port": str(port)}},
            "tls-creds": TLS_CREDS}


def nbd_client_args(incoming: Incoming) -> dict[str, Any]:
    """``blockdev-add`` on the source of the node writing into the target's export."""
    return {"driver": "nbd", "node-name": NBD_NODE, "export": incoming.export,
            "server": {"type": "inet", "host": incoming.host,
                       "port": str(incoming.nbd_port)},
            "tls-creds": TLS_CREDS, "tls-hostname": TLS_HOSTNAME}


@dataclass(frozen=True)
class Incoming:
    """Where a prepared target listens: sent from the target's member to the source's."""

    host: str
    migration_port: int
    nbd_port: int
    export: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Incoming:
        """Raises MigrationError on a malformed document."""
        try:
            incoming = cls(data["host"], data["migration_port"], data["nbd_port"],
                           data["export"])
        except (KeyError, TypeError) as exc:
            raise MigrationError(f"invalid migration target {data!r}: {exc}") from exc
        ports_ok = all(type(port) is int and 0 < port < 65536
                       for port in (incoming.migration_port, incoming.nbd_port))
        texts_ok = all(isinstance(text, str) and text and "," not in text
                       for text in (incoming.host, incoming.export))
        if not (ports_ok and texts_ok):
            raise MigrationError(f"invalid migration target {dict(data)!r}")
        return incoming

    @property
    def migration_uri(self) -> str:
        return f"tcp:{_bracketed(self.host)}:{self.migration_port}"


@dataclass(frozen=True)
class MigrationStats:
    """What a finished migration cost. ``total_ms``: the whole ``migrate_out`` (disk mirror
    included); ``migration_ms``: QEMU's RAM migration alone; ``downtime_ms``: the guest
    stopped, as QEMU measured it (last RAM pages, last disk blocks, device state)."""

    total_ms: int
    migration_ms: int
    downtime_ms: int
    ram_bytes: int
    ram_total: int
    disk_bytes: int
    tls: bool = False  # QEMU's migration parameters named our TLS credentials


def parse_stats(reply: Mapping[str, Any], total_ms: int, disk_bytes: int,
                tls: bool = False) -> MigrationStats:
    """Stats from a completed ``query-migrate`` reply."""
    ram = reply.get("ram") or {}
    return MigrationStats(total_ms=total_ms, migration_ms=int(reply.get("total-time", 0)),
                          downtime_ms=int(reply.get("downtime", 0)),
                          ram_bytes=int(ram.get("transferred", 0)),
                          ram_total=int(ram.get("total", 0)), disk_bytes=disk_bytes, tls=tls)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _free_port(host: str) -> int:
    """A TCP port free on ``host`` now (QEMU binds it a moment later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _call(driver: QemuDriver, name: str, doing: str, command: str,
          arguments: dict[str, Any] | None = None, timeout: float = qmp.TIMEOUT) -> Any:
    """One QMP command; a failure becomes MigrationError saying what we were doing."""
    try:
        return driver._qmp(name, command, arguments, timeout)
    except (qmp.QmpError, qmp.QmpUnavailable) as exc:
        raise MigrationError(f"VM {name!r}: {doing}: {exc}") from exc


def _quietly(driver: QemuDriver, name: str, command: str,
             arguments: dict[str, Any] | None = None) -> Any:
    """A clean-up command whose failure (nothing to clean) is ignored."""
    try:
        return driver._qmp(name, command, arguments, 10.0)
    except (qmp.QmpError, qmp.QmpUnavailable):
        return None


def _wait(what: str, deadline: float, poll: Callable[[], Any]) -> Any:
    """Call ``poll`` until it returns something truthy; MigrationError past ``deadline``."""
    while True:
        result = poll()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise MigrationError(f"timed out waiting for {what}")
        time.sleep(POLL)


def _load_credentials(driver: QemuDriver, name: str, endpoint: str,
                      credentials: Credentials) -> None:
    """Create the ``tls-creds-x509`` object. QEMU reads the files once, here, so they
    leave the disk at once: the key is never left behind, even if we crash later."""
    _quietly(driver, name, "object-del", {"id": TLS_CREDS})  # a failed migration's
    try:
        directory = write_credentials(driver.vm_dir(name), endpoint, credentials)
    except OSError as exc:
        raise MigrationError(f"VM {name!r}: writing the migration's TLS credentials: "
                             f"{exc}") from exc
    try:
        _call(driver, name, "loading the migration's TLS credentials", "object-add",
              tls_object(directory, endpoint))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _drop_credentials(driver: QemuDriver, name: str) -> None:
    """Forget the migration's TLS credentials (they may be loaded again for the next)."""
    _quietly(driver, name, "migrate-set-parameters", {"tls-creds": "", "tls-hostname": ""})
    _quietly(driver, name, "object-del", {"id": TLS_CREDS})
    shutil.rmtree(driver.vm_dir(name) / TLS_DIR, ignore_errors=True)


# -- target ---------------------------------------------------------------------------------


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
        _load_credentials(driver, name, "server", credentials)
        _call(driver, name, "setting migration parameters", "migrate-set-parameters",
              {"tls-creds": TLS_CREDS})
        nbd_port = _export_disk(driver, name, listen_host)
        migration_port = _free_port(listen_host)
        incoming = Incoming(listen_host, migration_port, nbd_port, EXPORT)
        _call(driver, name, "migrate-incoming", "migrate-incoming",
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
    devices = _call(driver, name, "query-block", "query-block")
    nodes = [d.get("inserted", {}).get("node-name") for d in devices if d.get("device") == DRIVE]
    if not nodes or not nodes[0]:
        raise MigrationError(f"VM {name!r}: no disk {DRIVE!r} in query-block: {devices!r}")
    for attempt in range(3):  # the free port may be taken before QEMU binds it
        port = _free_port(host)
        try:
            driver._qmp(name, "nbd-server-start", nbd_server_args(host, port))
            break
        except qmp.QmpError as exc:
            if attempt == 2:
                raise MigrationError(f"VM {name!r}: nbd-server-start on {host}: "
                                     f"{exc}") from exc
        except qmp.QmpUnavailable as exc:
            raise MigrationError(f"VM {name!r}: nbd-server-start: {exc}") from exc
    _call(driver, name, "exporting its disk", "block-export-add",
          {"type": "nbd", "id": EXPORT_ID, "node-name": nodes[0], "name": EXPORT,
           "writable": True})
    return port


def finish_incoming(driver: QemuDriver, name: str, timeout: float = STEP_TIMEOUT) -> None:
    """Stop the NBD server and run the migrated VM; from now on it is an ordinary VM of
    this driver. Call it only after ``migrate_out`` returned on the source. Raises
    InvalidState if the migration has not completed here, MigrationError."""
    if not driver._pid(name):
        raise InvalidState(f"cannot finish the migration of VM {name!r}: it is not running")
    state = _call(driver, name, "query-migrate", "query-migrate")
    status = _call(driver, name, "query-status", "query-status").get("status")
    if state.get("status") != "completed" or status == "inmigrate":
        raise InvalidState(f"cannot finish the migration of VM {name!r}: it is "
                           f"{state.get('status', 'not started')} (run state {status})")
    _quietly(driver, name, "nbd-server-stop")  # closes its exports too
    _drop_credentials(driver, name)
    _call(driver, name, "cont", "cont")
    _wait(f"VM {name!r} to run", time.monotonic() + timeout,
          lambda: _call(driver, name, "query-status", "query-status")
          .get("status") == "running")


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


# -- source ---------------------------------------------------------------------------------


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
    if downtime_ms <= 0:
        raise MigrationError(f"downtime must be positive, got {downtime_ms} ms")
    status = driver.status(name)
    if status != "Running":
        raise InvalidState(f"cannot migrate VM {name!r}: it is {status}")
    started = time.monotonic()
    deadline = started + timeout
    report = progress or (lambda _: None)
    try:
        _load_credentials(driver, name, "client", credentials)
        _mirror_disk(driver, name, incoming, deadline, report)
        _call(driver, name, "setting migration capabilities", "migrate-set-capabilities",
              {"capabilities": [{"capability": "pause-before-switchover", "state": True},
                                {"capability": "events", "state": True}]})
        _call(driver, name, "setting migration parameters", "migrate-set-parameters",
              {"downtime-limit": downtime_ms, "max-bandwidth": MAX_BANDWIDTH,
               "tls-creds": TLS_CREDS, "tls-hostname": TLS_HOSTNAME})
        parameters = _call(driver, name, "query-migrate-parameters",
                           "query-migrate-parameters")
        monitor_path = driver._dir(name) / cl.MIGRATION_QMP
        if monitor_path.exists():  # held from before the migrate: no event is missed
            with _monitor(name, monitor_path) as monitor:
                _call(driver, name, f"migrate to {incoming.migration_uri}", "migrate",
                      {"uri": incoming.migration_uri})
                reply, disk_bytes = _follow_events(monitor, name, deadline, report)
        else:  # a VM started before the second monitor existed: poll
            _call(driver, name, f"migrate to {incoming.migration_uri}", "migrate",
                  {"uri": incoming.migration_uri})
            reply, disk_bytes = _follow_migration(driver, name, deadline, report)
    except BaseException:
        _undo_source(driver, name)
        raise
    return parse_stats(reply, round((time.monotonic() - started) * 1000), disk_bytes,
                       tls=parameters.get("tls-creds") == TLS_CREDS)


def _job(driver: QemuDriver, name: str) -> dict[str, Any] | None:
    jobs = _call(driver, name, "query-jobs", "query-jobs")
    return next((job for job in jobs if job.get("id") == MIRROR_JOB), None)


def _mirror_disk(driver: QemuDriver, name: str, incoming: Incoming, deadline: float,
                 report: Progress) -> None:
    """Start the mirror to the target's export and wait until it is in sync (ready)."""
    _call(driver, name, f"connecting to the target's disk at {incoming.host}:"
          f"{incoming.nbd_port}", "blockdev-add", nbd_client_args(incoming))
    _call(driver, name, "starting the disk mirror", "blockdev-mirror",
          {"job-id": MIRROR_JOB, "device": DRIVE, "target": NBD_NODE, "sync": "top",
           "auto-dismiss": False})

    def ready() -> bool:
        job = _job(driver, name)
        if job is None or job.get("status") == "concluded":
            error = (job or {}).get("error", "the job vanished")
            raise MigrationError(f"VM {name!r}: disk mirror failed: {error}")
        report({"phase": "disk", "disk_done": job.get("current-progress", 0),
                "disk_total": job.get("total-progress", 0)})
        return job.get("status") == "ready"

    _wait(f"the disk mirror of VM {name!r}", deadline, ready)


def _follow_migration(driver: QemuDriver, name: str, deadline: float,
                      report: Progress) -> tuple[dict[str, Any], int]:
    """Poll the migration to its end, completing the mirror at the pre-switchover pause.
    Returns the final query-migrate reply and the bytes the mirror copied."""
    disk_bytes, switched = 0, False
    while True:
        info = _call(driver, name, "query-migrate", "query-migrate")
        status = info.get("status")
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
            _call(driver, name, "migrate-continue", "migrate-continue",
                  {"state": "pre-switchover"})
        job = None if switched else _job(driver, name)  # the mirror copies guest writes on
        ram = info.get("ram") or {}
        report({"phase": "memory", "status": status,
                "ram_transferred": ram.get("transferred", 0), "ram_total": ram.get("total", 0),
                "ram_remaining": ram.get("remaining", 0),
                "disk_done": job.get("current-progress", 0) if job else disk_bytes,
                "disk_total": job.get("total-progress", 0) if job else disk_bytes})
        if time.monotonic() >= deadline:
            raise MigrationError(f"VM {name!r}: migration timed out ({status})")
        time.sleep(POLL)


def _monitor(name: str, path: Path) -> qmp.Monitor:
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


def _follow_events(monitor: qmp.Monitor, name: str, deadline: float,
                   report: Progress) -> tuple[dict[str, Any], int]:
    """``_follow_migration`` driven by QEMU's MIGRATION events on a held monitor: the
    switchover starts the moment the guest stops, not at the next poll; between events
    the migration is queried for progress every PROGRESS_POLL s."""
    disk_bytes, switched = 0, False
    while True:
        event = _take(monitor, lambda e: e.get("event") == "MIGRATION", PROGRESS_POLL)
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
    _call(driver, name, "completing the disk mirror", "block-job-cancel",
          {"device": MIRROR_JOB})

    def concluded() -> dict[str, Any] | None:
        job = _job(driver, name)
        if job is None:
            raise MigrationError(f"VM {name!r}: the disk mirror vanished")
        return job if job.get("status") == "concluded" else None

    job = _wait(f"the disk mirror of VM {name!r} to complete", deadline, concluded)
    return _release_mirror(name, job, lambda *call: _call(driver, name, *call))


def _release_mirror(name: str, job: dict[str, Any], call: Callable[..., Any]) -> int:
    """After the mirror concluded: fail on its error, dismiss it and drop the NBD node
    (``call(doing, command, arguments)``). Returns the bytes it copied."""
    if job.get("error"):
        raise MigrationError(f"VM {name!r}: disk mirror failed: {job['error']}")
    call("job-dismiss", "job-dismiss", {"id": MIRROR_JOB})
    call("disconnecting the target's disk", "blockdev-del", {"node-name": NBD_NODE})
    return int(job.get("current-progress", 0))


def resume_source(driver: QemuDriver, name: str, timeout: float = STEP_TIMEOUT) -> None:
    """After a failed migration: cancel it and the mirror if they run, drop the NBD node
    and run the VM again (``cont``). Never call it once the target has run. Raises
    InvalidState if the VM's QEMU is gone, MigrationError if it does not run again."""
    if not driver._pid(name):
        raise InvalidState(f"cannot resume VM {name!r}: its QEMU is gone")
    deadline = time.monotonic() + timeout
    if (_quietly(driver, name, "query-migrate") or {}).get("status") in ACTIVE:
        _quietly(driver, name, "migrate_cancel")
        _wait(f"the migration of VM {name!r} to stop", deadline,
              lambda: _call(driver, name, "query-migrate", "query-migrate")
              .get("status") not in ACTIVE)
    job = _job(driver, name)
    if job is not None and job.get("status") != "concluded":
        _quietly(driver, name, "block-job-cancel", {"device": MIRROR_JOB, "force": True})
        _wait(f"the disk mirror of VM {name!r} to stop", deadline,
              lambda: (_job(driver, name) or {"status": "concluded"})
              .get("status") == "concluded")
    _quietly(driver, name, "job-dismiss", {"id": MIRROR_JOB})
    _quietly(driver, name, "blockdev-del", {"node-name": NBD_NODE})
    _drop_credentials(driver, name)
    if _call(driver, name, "query-status", "query-status").get("status") != "running":
        _call(driver, name, "resuming", "cont")


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
            status = _call(driver, name, "query-migrate", "query-migrate").get("status")
            if status != "completed":
                raise InvalidState(f"cannot drop the source of VM {name!r}: its migration "
                                   f"is {status or 'not started'}")
            driver._kill(name)
        driver._cleanup(spec)
