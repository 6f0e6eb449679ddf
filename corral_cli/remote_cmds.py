"""``corral remote add|list|remove|switch|get-default``, as ``lxc remote`` (LXD 5.0).

``remote add NAME TOKEN`` decodes a trust token, connects to the first of its
addresses whose certificate has the token's fingerprint, pins that certificate
and trusts this client's certificate with the token's secret.
``remote add NAME https://ADDR[:PORT] --accept-certificate [--password S]``
pins whatever certificate the server presents (the caller vouches for it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
from urllib.parse import urlsplit

from corral_cli import format as fmt
from corral_cli.client import ApiError, Client, CliError, Unreachable, UsageError
from corral_cli.remote_config import (
    LOCAL,
    Remote,
    conf_dir,
    ensure_client_cert,
    load_config,
    save_config,
)
from corral_cli.trust import decode_token

DEFAULT_PORT = 8443
CONNECT_TIMEOUT = 10.0


def url_of(address: str) -> tuple[str, str, int]:
    """``https://host:port`` (default port 8443), host and port of an address or URL."""
    parts = urlsplit(address if "://" in address else f"https://{address}")
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"Invalid remote address {address!r}: use https://ADDR[:PORT]")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise UsageError(f"Invalid remote address {address!r}: {exc}") from exc
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    return f"https://{shown}:{port}", host, port


async def fetch_certificate(host: str, port: int) -> bytes:
    """The DER certificate the server at host:port presents (not verified: callers pin it)."""
    from corral_shared import tls  # cryptography: loaded by the verbs that use it

    crt, key = ensure_client_cert()
    context = tls.client_context(crt, key)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=""),
            CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise Unreachable(f"Cannot reach {host}:{port}: {exc}") from exc
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    try:
        await writer.wait_closed()
    except (OSError, ConnectionError):
        pass
    return bytes(der or b"")


async def _from_token(token: str) -> tuple[str, bytes, str]:
    """URL, pinned certificate and secret of the first token address that proves itself."""
    from corral_shared import tls  # cryptography: loaded by the verbs that use it

    fields = decode_token(token)
    problems = []
    for address in fields.get("addresses") or []:
        url, host, port = url_of(str(address))
        try:
            der = await fetch_certificate(host, port)
        except Unreachable as exc:
            problems.append(exc.message)
            continue
        if tls.fingerprint(der) != fields["fingerprint"]:
            problems.append(f"{url}: certificate fingerprint mismatch")
            continue
        return url, der, str(fields["secret"])
    raise CliError("No address of the token works: " + ("; ".join(problems) or "none given"))


async def _from_url(address: str, accept: bool, password: str) -> tuple[str, bytes, str]:
    from corral_shared import tls  # cryptography: loaded by the verbs that use it

    url, host, port = url_of(address)
    der = await fetch_certificate(host, port)
    if not accept:
        fingerprint = tls.fingerprint(der)
        if not sys.stdin.isatty():
            raise CliError(f"Certificate fingerprint: {fingerprint}; "
                           "pass --accept-certificate to trust it")
        answer = input(f"Certificate fingerprint: {fingerprint}\nok (y/n)? ").strip().lower()
        if answer not in ("y", "yes"):
            raise CliError("Server certificate NACKed by user")
    return url, der, password


async def _trust_me(remote: Remote, secret: str) -> None:
    """Make the remote trust this client's certificate (with ``secret`` if needed)."""
    async with Client(remote=remote) as client:
        info = await client.get("/1.0")
        if info.get("auth") == "trusted":
            return
        if not secret:
            raise CliError("The remote does not trust this client: use a trust token "
                           "(corral config trust add) or --password")
        crt, _ = ensure_client_cert()
        from corral_shared import tls  # cryptography: loaded by the verbs that use it

        der = tls.pem_to_der(crt.read_text())
        body = {"type": "client", "certificate": base64.b64encode(der).decode(),
                "password": secret}
        await client.request("POST", "/1.0/certificates", body=body)
        if (await client.get("/1.0")).get("auth") != "trusted":
            raise CliError("The remote accepted the certificate but still does not trust it")


async def add(args: argparse.Namespace) -> int:
    from corral_shared import tls  # cryptography: loaded by the verbs that use it

    name = args.remote_name
    if not name or any(c in name for c in ":/ ") or name == LOCAL:
        raise UsageError(f"Invalid remote name {name!r}")
    config = load_config()
    if name in config["remotes"]:
        raise UsageError(f"Remote {name} exists as <{config['remotes'][name].get('addr')}>")
    if args.address.startswith(("https://", "http://")) or ":" in args.address:
        url, der, secret = await _from_url(args.address, args.accept_certificate, args.password)
    else:
        url, der, secret = await _from_token(args.address)
    remote = Remote(name, url)
    remote.server_cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    remote.server_cert.write_text(tls.der_to_pem(der))
    try:
        await _trust_me(remote, secret or args.password)
    except (CliError, ApiError):
        remote.server_cert.unlink(missing_ok=True)
        raise
    config["remotes"][name] = {"addr": url, "auth_type": "tls", "protocol": "lxd",
                               "public": False}
    save_config(config)
    return 0


async def list_(args: argparse.Namespace) -> int:
    config = load_config()
    default = config.get("default-remote") or LOCAL
    rows = []
    for name, entry in config["remotes"].items():
        shown = f"{name} (current)" if name == default else name
        rows.append([shown, str(entry.get("addr", "")), str(entry.get("protocol", "lxd")),
                     str(entry.get("auth_type", "file access" if name == LOCAL else "tls")),
                     "YES" if entry.get("public") else "NO", "YES" if name == LOCAL else "NO"])
    header = ["NAME", "URL", "PROTOCOL", "AUTH TYPE", "PUBLIC", "STATIC"]
    sys.stdout.write(fmt.render(args.format, header, fmt.sort_rows(rows), config["remotes"]))
    return 0


async def remove(args: argparse.Namespace) -> int:
    config = load_config()
    name = args.remote_name
    if name not in config["remotes"]:
        raise UsageError(f"Remote {name} doesn't exist")
    if name == LOCAL:
        raise UsageError("Remote local is static and cannot be modified")
    if config.get("default-remote") == name:
        raise UsageError("Can't remove the default remote")
    del config["remotes"][name]
    save_config(config)
    (conf_dir() / "servercerts" / f"{name}.crt").unlink(missing_ok=True)
    return 0


async def switch(args: argparse.Namespace) -> int:
    config = load_config()
    if args.remote_name not in config["remotes"]:
        raise UsageError(f"Remote {args.remote_name} doesn't exist")
    config["default-remote"] = args.remote_name
    save_config(config)
    return 0


async def get_default(args: argparse.Namespace) -> int:
    print(load_config().get("default-remote") or LOCAL)
    return 0
