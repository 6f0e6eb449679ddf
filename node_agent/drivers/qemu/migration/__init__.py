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

Modules: ``common`` (names, errors, ``Incoming``, figures, QMP helpers), ``tls``
(credentials), ``target``, ``source``, ``switchover`` (following the migration on the
source). Every public name is re-exported here.
"""

from node_agent.drivers.qemu.migration.common import (
    ACTIVE,
    DRIVE,
    EXPORT,
    EXPORT_ID,
    MAX_BANDWIDTH,
    MIRROR_JOB,
    NBD_NODE,
    POLL,
    PROGRESS_POLL,
    STEP_TIMEOUT,
    TLS_CREDS,
    TLS_DIR,
    TLS_HOSTNAME,
    Incoming,
    MigrationError,
    MigrationStats,
    Progress,
    parse_stats,
)
from node_agent.drivers.qemu.migration.source import (
    finish_source,
    migrate_out,
    nbd_client_args,
    outgoing_left,
    resume_source,
)
from node_agent.drivers.qemu.migration.target import (
    abort_incoming,
    finish_incoming,
    incoming_left,
    keep_incoming,
    nbd_server_args,
    prepare_incoming,
)
from node_agent.drivers.qemu.migration.tls import (
    FFDHE2048_PEM,
    Credentials,
    tls_object,
    write_credentials,
)

__all__ = [
    "ACTIVE", "DRIVE", "EXPORT", "EXPORT_ID", "FFDHE2048_PEM", "MAX_BANDWIDTH", "MIRROR_JOB",
    "NBD_NODE", "POLL", "PROGRESS_POLL", "STEP_TIMEOUT", "TLS_CREDS", "TLS_DIR", "TLS_HOSTNAME",
    "Credentials", "Incoming", "MigrationError", "MigrationStats", "Progress",
    "abort_incoming", "finish_incoming", "finish_source", "incoming_left", "keep_incoming",
    "migrate_out", "nbd_client_args", "nbd_server_args", "outgoing_left", "parse_stats",
    "prepare_incoming", "resume_source", "tls_object", "write_credentials",
]
