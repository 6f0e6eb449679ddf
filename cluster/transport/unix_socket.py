"""The API's unix socket, bound with its final owner and mode before anyone can connect.

Every caller on the unix socket is trusted (``https.caller_kind``: ``unix``), as LXD
trusts its socket: whoever may connect may launch a privileged container, so access to
the socket is root access. It is ``root:root 0600``, unless a ``corral`` group exists
(``deploy/systemd/corral.sysusers.conf`` makes it): then ``root:corral 0660``, and its
members use corral without sudo, as LXD's ``lxd`` group does. Membership is
root-equivalent; the deployment README says so.

The socket is bound inside a fresh 0700 directory, given its group and mode there, and
only then renamed onto ``$CORRAL_DIR/unix.socket``: binding in place would leave it open
to every local user (``0777 & ~umask``) until the chmod, and changing the umask would
change it for every thread of the daemon at once.
"""

from __future__ import annotations

import grp
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOCKET_GROUP = "corral"


@dataclass(frozen=True)
class Access:
    """Who may use the socket: its mode and group id (-1: leave the group as is)."""

    mode: int
    gid: int

    def describe(self, group: str) -> str:
        return f"0{self.mode:o}" + (f", group {group}" if self.gid >= 0 else ", root only")


def access_for(gid: int | None) -> Access:
    """0660 with the group when it exists (``gid``), else 0600 for root alone."""
    return Access(0o600, -1) if gid is None else Access(0o660, gid)


def group_id(name: str) -> int | None:
    """The id of group ``name``; None if there is no such group."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def bind_socket(path: Path, group: str = SOCKET_GROUP) -> tuple[socket.socket, Access]:
    """A unix stream socket bound at ``path`` (a stale one there is replaced), already
    with the owner and mode ``access_for`` gives (blocking; raises OSError). The caller
    listens on it (aiohttp's ``SockSite``) and closes it."""
    access = access_for(group_id(group))
    scratch = Path(tempfile.mkdtemp(prefix=".socket-", dir=path.parent))  # mode 0700
    staged = scratch / path.name
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(staged))
        os.chown(staged, -1, access.gid)
        os.chmod(staged, access.mode)
        os.replace(staged, path)
    except BaseException:
        sock.close()
        staged.unlink(missing_ok=True)
        raise
    finally:
        scratch.rmdir()
    return sock, access
