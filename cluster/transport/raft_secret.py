"""The password of a member's Raft port.

pysyncobj unpickles whatever reaches its port unless a password is set; with one,
every message carries a MAC that is checked before anything is parsed. A clustered
member derives the password from the cluster key (``raft_password``), so
only holders of that key talk to it. A member that is not clustered has nobody to
share a key with: it keeps a random secret in a root-only file, so that not even a
local user who reaches its loopback port can send it a message.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from cluster.state.journal import fsync_directory

SECRET_FILE = "secret"


def raft_password(cluster_key_pem: bytes) -> str:
    """The Raft encryption password every member derives from the cluster key."""
    return hashlib.sha256(b"corral-raft\0" + cluster_key_pem).hexdigest()


def local_raft_password(raft_dir: Path) -> str:
    """The lone member's Raft password, made once (0600, written whole before it is
    named) and read back on every later start."""
    path = raft_dir / SECRET_FILE
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        secret = ""
    if secret:
        os.chmod(path, 0o600)
        return secret
    secret = secrets.token_hex(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secret + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(raft_dir)  # the name too, or a power loss could lose the secret
    return secret


def member_raft_password(raft_dir: Path, clustered: bool, cluster_key: Path) -> str:
    """The password this member's Raft runs with: the cluster's when clustered."""
    return raft_password(cluster_key.read_bytes()) if clustered else local_raft_password(raft_dir)
