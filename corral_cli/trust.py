"""``corral config trust ...``: the server's trust store, as ``lxc config trust`` (LXD 5.0).

A trust token is a running operation of class ``token`` on the server; the
printable token is base64 of its JSON fields (client name, server certificate
fingerprint, addresses, secret, expiry), exactly LXD's format.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from corral_cli import format as fmt
from corral_cli.client import Client, CliError, UsageError
from corral_cli.operations import flatten

TOKEN_FIELDS = ("client_name", "fingerprint", "addresses", "secret", "expires_at")


def encode_token(meta: dict[str, Any]) -> str:
    """The printable token of a token operation's metadata (LXD's encoding)."""
    fields = {k: meta[k] for k in TOKEN_FIELDS if k in meta}
    return base64.b64encode(json.dumps(fields, separators=(",", ":")).encode()).decode()


def decode_token(text: str) -> dict[str, Any]:
    """The fields of a printable token; ``UsageError`` when it is not one."""
    try:
        data = json.loads(base64.b64decode(text.strip(), validate=True))
    except ValueError as exc:
        raise UsageError(f"Invalid trust token: {exc}") from exc
    if not isinstance(data, dict) or not data.get("secret") or not data.get("fingerprint"):
        raise UsageError("Invalid trust token: it lacks a secret or a fingerprint")
    return data


async def add(client: Client, args: argparse.Namespace) -> int:
    if not args.name:
        raise UsageError("A client name (or a certificate file) is required")
    path = Path(args.name)
    cert_type = getattr(args, "cert_type", "client")
    if path.is_file():
        body = {"type": cert_type, "certificate": path.read_text(),
                "name": args.cert_name or path.stem}
        await client.request("POST", "/1.0/certificates", body=body)
        return 0
    if cert_type != "client":
        raise UsageError(f"A {cert_type} certificate is added from its FILE, not a token")
    resp = await client.request("POST", "/1.0/certificates",
                                body={"type": "client", "token": True, "name": args.name})
    op = resp.metadata if isinstance(resp.metadata, dict) else {}
    meta = op.get("metadata") or {}
    if not meta.get("secret"):
        raise CliError("The server did not return a trust token")
    print(f"Client {args.name} certificate add token:")
    print(encode_token(meta))
    return 0


def _cert_facts(pem: str) -> tuple[str, str, str]:
    """Common name, issue date and expiry date of a PEM certificate (lxc's columns)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return "", "", ""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    layout = "%b %d, %Y at %I:%M%p (UTC)"
    return (str(names[0].value) if names else "",
            cert.not_valid_before_utc.strftime(layout),
            cert.not_valid_after_utc.strftime(layout))


async def list_(client: Client, args: argparse.Namespace) -> int:
    certs = await client.get("/1.0/certificates", params={"recursion": "1"}) or []
    rows = []
    for cert in certs:
        common_name, issued, expires = _cert_facts(str(cert.get("certificate", "")))
        rows.append([str(cert.get("type", "")), str(cert.get("name", "")), common_name,
                     str(cert.get("fingerprint", ""))[:12], issued, expires])
    header = ["TYPE", "NAME", "COMMON NAME", "FINGERPRINT", "ISSUE DATE", "EXPIRY DATE"]
    sys.stdout.write(fmt.render(args.format, header, fmt.sort_rows(rows), certs))
    return 0


async def remove(client: Client, args: argparse.Namespace) -> int:
    if not args.name:
        raise UsageError("A certificate fingerprint is required")
    await client.request("DELETE", f"/1.0/certificates/{quote(args.name)}")
    return 0


async def _token_ops(client: Client) -> list[dict[str, Any]]:
    ops = flatten(await client.get("/1.0/operations", params={"recursion": "1"}))
    return [op for op in ops if op.get("class") == "token" and op.get("status") == "Running"]


async def list_tokens(client: Client, args: argparse.Namespace) -> int:
    ops = await _token_ops(client)
    rows = [[str(op["metadata"].get("client_name", "")), encode_token(op["metadata"]),
             str(op["metadata"].get("expires_at", ""))] for op in ops if op.get("metadata")]
    raw = [op.get("metadata") for op in ops]
    sys.stdout.write(fmt.render(args.format, ["NAME", "TOKEN", "EXPIRES AT"],
                                fmt.sort_rows(rows), raw))
    return 0


async def revoke_token(client: Client, args: argparse.Namespace) -> int:
    ops = [op for op in await _token_ops(client)
           if (op.get("metadata") or {}).get("client_name") == args.name]
    if not ops:
        raise CliError(f"No trust token for {args.name!r} found")
    for op in ops:
        await client.request("DELETE", f"/1.0/operations/{quote(str(op['id']))}")
    return 0
