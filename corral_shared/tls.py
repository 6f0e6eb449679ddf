"""Certificates and TLS contexts for corral's HTTPS API (LXD's model).

Shared vocabulary because both sides use it: the daemon's listener and member-to-member
client (``cluster.transport``) and the CLI's remotes (``corral_cli``, which imports
nothing of ``cluster``). Imports nothing of corral.

The server and every client own a self-signed certificate. Clients are
authorised by the SHA-256 fingerprint of their certificate in the replicated
trust store, not by a CA; clients pin the server's certificate (or its
fingerprint, taken from a trust token) instead of validating a CA chain.

Python's ``ssl`` module cannot accept an unknown self-signed client
certificate: with ``CERT_OPTIONAL`` OpenSSL aborts the handshake when the
presented certificate does not chain to a loaded CA. LXD (Go's
``tls.RequestClientCert``) accepts any certificate and authorises later, so
``server_context`` installs an OpenSSL certificate-verify callback that always
accepts (through ``ctypes``, on the very ``SSL_CTX`` the context wraps) and
checks the installation by reading the verify mode back through OpenSSL.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 3650


class CertificateError(ValueError):
    """A certificate that cannot be parsed (bad PEM, bad base64, not X.509)."""


def fingerprint(der: bytes) -> str:
    """LXD's certificate fingerprint: hex SHA-256 of the DER encoding."""
    return hashlib.sha256(der).hexdigest()


def pem_to_der(pem: str | bytes) -> bytes:
    data = pem.encode() if isinstance(pem, str) else pem
    return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)


def der_to_pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def parse_certificate(text: str) -> bytes:
    """DER bytes of a certificate given as PEM or as base64 DER (LXD accepts both).

    Raises ``CertificateError`` for anything that is not an X.509 certificate.
    """
    try:
        if "-----BEGIN" in text:
            return pem_to_der(text)
        der = base64.b64decode("".join(text.split()), validate=True)
        x509.load_der_x509_certificate(der)
        return der
    except (ValueError, binascii.Error, TypeError) as exc:
        raise CertificateError(f"Invalid certificate: {exc}") from exc


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def generate(common_name: str, hosts: list[str]) -> tuple[bytes, bytes]:
    """A new EC P-384 key and a self-signed certificate for it: ``(cert_pem, key_pem)``.

    The certificate is its own trust anchor (CA:TRUE), so a client can pin it by
    loading it as the only CA, as ``lxc`` does with ``servercerts/<remote>.crt``.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "corral"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    sans = [_san(h) for h in dict.fromkeys(hosts) if h]
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(True, False, True, False, False, True, False,
                                            False, False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA384())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def issue(ca_cert_pem: bytes, ca_key_pem: bytes, common_name: str, hosts: list[str],
          valid: datetime.timedelta = datetime.timedelta(days=1)) -> tuple[bytes, bytes]:
    """A new EC P-256 key and a leaf certificate (CA:FALSE) for it, signed by the CA pair:
    ``(cert_pem, key_pem)``, valid from an hour ago (members' clocks differ) for ``valid``.

    For peers that refuse to present a CA certificate as their own, as GnuTLS in QEMU does
    ("basic constraints show a CA"): they trust ``ca_cert_pem`` and present a leaf of it.
    Raises ``CertificateError`` if the pair cannot be read or does not match.
    """
    try:
        ca = x509.load_pem_x509_certificate(ca_cert_pem)
        ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"Invalid CA pair: {exc}") from exc
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) \
            or ca_key.public_key().public_bytes(*spki) != ca.public_key().public_bytes(*spki):
        raise CertificateError("The CA key does not match the CA certificate")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "corral"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + valid)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(True, False, True, False, False, False, False,
                                            False, False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False))
    sans = [_san(h) for h in dict.fromkeys(hosts) if h]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA384())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def ensure_pair(crt: Path, key: Path, common_name: str, hosts: list[str]) -> bytes:
    """Create ``crt`` and ``key`` (0600) unless both exist; returns the certificate PEM."""
    if crt.exists() and key.exists():
        return crt.read_bytes()
    crt.parent.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = generate(common_name, hosts)
    _write_private(key, key_pem, 0o600)
    _write_private(crt, cert_pem, 0o600)
    return cert_pem


def ensure_server_cert(root: Path) -> bytes:
    """``$CORRAL_DIR/server.crt`` and ``server.key``, made on first start (CN corral).

    SANs name this host and loopback; clients pin the fingerprint, so the
    listen address can change later without a new certificate.
    """
    hosts = ["localhost", socket.gethostname(), "127.0.0.1", "::1"]
    return ensure_pair(root / "server.crt", root / "server.key", "corral", hosts)


# --- TLS contexts ---------------------------------------------------------------------------

_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_accept_any = _VERIFY_CB(lambda store_ctx, arg: 1)  # module-level: must outlive every context


def _libssl() -> ctypes.CDLL:
    import _ssl

    # The symbols resolve through _ssl's own link to libssl: the same library, same SSL_CTX.
    lib = ctypes.CDLL(getattr(_ssl, "__file__", None))
    lib.SSL_CTX_set_cert_verify_callback.argtypes = [ctypes.c_void_p, _VERIFY_CB,
                                                     ctypes.c_void_p]
    lib.SSL_CTX_set_cert_verify_callback.restype = None
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    return lib


def _ssl_ctx_pointer(context: ssl.SSLContext, lib: ctypes.CDLL) -> int:
    """The ``SSL_CTX*`` right after the object header of CPython's ``PySSLContext``,
    checked by reading the verify mode back through OpenSSL for two settings."""
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        raise RuntimeError("cannot locate the OpenSSL context")
    for mode, expected in ((ssl.CERT_REQUIRED, 3), (ssl.CERT_OPTIONAL, 1)):
        context.verify_mode = mode
        if lib.SSL_CTX_get_verify_mode(pointer) != expected:
            raise RuntimeError("unexpected ssl.SSLContext layout")
    return int(pointer)


def server_context(crt: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context that requests, and accepts, any client certificate.

    Authorisation is the caller's job: look the peer's fingerprint up in the
    trust store (``peer_fingerprint``). Raises ``RuntimeError`` if the
    accept-any callback cannot be installed on this Python build.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(crt), str(key))
    lib = _libssl()
    pointer = _ssl_ctx_pointer(context, lib)  # leaves verify_mode = CERT_OPTIONAL
    lib.SSL_CTX_set_cert_verify_callback(pointer, _accept_any, None)
    return context


def client_context(crt: Path | None = None, key: Path | None = None,
                   server_pem: str | None = None) -> ssl.SSLContext:
    """Client context presenting ``crt``/``key``; with ``server_pem`` only that exact
    server certificate is accepted (pinning, no host-name check), without it none is
    verified (first contact: the caller checks the fingerprint itself)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    if server_pem:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=server_pem)
    else:
        context.verify_mode = ssl.CERT_NONE
    if crt is not None and key is not None:
        context.load_cert_chain(str(crt), str(key))
    return context


def peer_fingerprint(transport: Any) -> str:
    """Fingerprint of the client certificate on a TLS transport, or ``""`` if none."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return ""
    der = ssl_object.getpeercert(binary_form=True)
    return fingerprint(der) if der else ""
