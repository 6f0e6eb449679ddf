"""The migration's TLS: each side's certificate and key and the CA the peer's must chain
to, handed to QEMU as a ``tls-creds-x509`` object (GnuTLS) for both streams (NBD and RAM).
The files exist only while ``object-add`` reads them."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node_agent.drivers.qemu.driver import QemuDriver
from node_agent.drivers.qemu.migration.common import (
    TLS_CREDS,
    TLS_DIR,
    MigrationError,
    call_qmp,
    quietly,
)

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

def load_credentials(driver: QemuDriver, name: str, endpoint: str,
                     credentials: Credentials) -> None:
    """Create the ``tls-creds-x509`` object. QEMU reads the files once, here, so they
    leave the disk at once: the key is never left behind, even if we crash later."""
    quietly(driver, name, "object-del", {"id": TLS_CREDS})  # a failed migration's
    try:
        directory = write_credentials(driver.vm_dir(name), endpoint, credentials)
    except OSError as exc:
        raise MigrationError(f"VM {name!r}: writing the migration's TLS credentials: "
                             f"{exc}") from exc
    try:
        call_qmp(driver, name, "loading the migration's TLS credentials", "object-add",
                 tls_object(directory, endpoint))
    finally:
        shutil.rmtree(directory, ignore_errors=True)

def drop_credentials(driver: QemuDriver, name: str) -> None:
    """Forget the migration's TLS credentials (they may be loaded again for the next)."""
    quietly(driver, name, "migrate-set-parameters", {"tls-creds": "", "tls-hostname": ""})
    quietly(driver, name, "object-del", {"id": TLS_CREDS})
    shutil.rmtree(driver.vm_dir(name) / TLS_DIR, ignore_errors=True)
