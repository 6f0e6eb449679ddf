"""``/1.0/certificates``: the trust store and trust tokens (LXD 5.0's shapes).

``POST /1.0/certificates`` is reachable untrusted: without trust it must carry
a token's secret (LXD 5.0's ``password``, or ``trust_token``; the raw secret or
the whole printable token), consumed in the same commit that adds the
certificate. ``{"token": true}`` (trusted only) issues a token: a running
operation of class ``token`` whose metadata holds the token's fields, as in
LXD; it ends when the token is used (Success), expires (Failure) or is revoked
by cancelling it (``DELETE /1.0/operations/<id>``). The token itself lives in
the replicated state (only its secret's SHA-256), so it stays usable until it
expires even if the operation is lost with a daemon restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from typing import Any

from aiohttp import web

from cluster.api import queries, schemas
from cluster.api.bodies import json_body
from cluster.api.context import Context
from cluster.api.handlers.common import ctx_of
from cluster.api.op_registry import Operation, rfc3339
from cluster.api.response import ApiError, async_operation, bad_request, not_found
from cluster.api.response import sync as sync_response
from cluster.state.clock import wall_time
from cluster.state.commands import command
from cluster.state.model import Certificate
from cluster.transport.https import HTTPS, is_trusted, listen_addresses, token_lifetime
from corral_shared import tls


def certificate_view(cert: Certificate) -> dict[str, Any]:
    return {"name": cert.name, "type": cert.type, "restricted": cert.restricted,
            "projects": list(cert.projects), "certificate": cert.certificate,
            "fingerprint": cert.fingerprint}


def secret_of(value: str) -> str:
    """The secret inside a printable token, or ``value`` itself when it is a bare secret."""
    try:
        decoded = json.loads(base64.b64decode(value.strip(), validate=True))
    except (ValueError, binascii.Error):
        return value
    return str(decoded.get("secret", "")) if isinstance(decoded, dict) else value


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def list_certificates(request: web.Request) -> web.Response:
    with ctx_of(request).store.read() as state:
        certs = [certificate_view(c) for c in state.certificates.values()]
    if not queries.recursion(request):
        return sync_response([f"/1.0/certificates/{c['fingerprint']}" for c in certs])
    return sync_response(certs)


def _lookup(ctx: Context, prefix: str) -> Certificate:
    """The certificate whose fingerprint starts with ``prefix`` (LXD accepts prefixes)."""
    with ctx.store.read() as state:
        found = [c for fp, c in state.certificates.items() if prefix and fp.startswith(prefix)]
    if not found:
        raise not_found("Certificate not found")
    if len(found) > 1:
        raise bad_request("More than one certificate matches")
    return found[0]


async def get_certificate(request: web.Request) -> web.Response:
    cert = _lookup(ctx_of(request), request.match_info["fingerprint"])
    return sync_response(certificate_view(cert), etag=cert.fingerprint)


async def update_certificate(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    cert = _lookup(ctx, request.match_info["fingerprint"])
    body = await json_body(request, schemas.CertificatePut)
    given = body.get("certificate")
    if given and tls.fingerprint(_der(str(given))) != cert.fingerprint:
        raise bad_request("Changing a certificate's certificate is not supported")
    fields = {k: body[k] for k in ("name", "type", "restricted", "projects") if k in body}
    if request.method == "PUT":
        fields = {"name": "", "type": "client", "restricted": False, "projects": [], **fields}
    await ctx.store.submit(command("certificate.update", fingerprint=cert.fingerprint,
                                   **fields))
    return sync_response({})


async def delete_certificate(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    cert = _lookup(ctx, request.match_info["fingerprint"])
    await ctx.store.submit(command("certificate.delete", fingerprint=cert.fingerprint))
    return sync_response({})


def _der(text: str) -> bytes:
    try:
        return tls.parse_certificate(text)
    except tls.CertificateError as exc:
        raise bad_request(str(exc)) from exc


def _certificate_args(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """The record to add: the body's certificate, else the TLS client's own (as LXD)."""
    text = body.get("certificate") or ""
    if text:
        der = _der(str(text))
    else:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else b""
        if not der:
            raise bad_request("No client certificate provided")
    return {"fingerprint": tls.fingerprint(der), "certificate": tls.der_to_pem(der),
            "type": str(body.get("type") or "client"), "name": str(body.get("name") or ""),
            "restricted": bool(body.get("restricted", False)),
            "projects": list(body.get("projects") or [])}


def _created(fingerprint: str) -> web.Response:
    response = sync_response(None, status=201)
    response.headers["Location"] = f"/1.0/certificates/{fingerprint}"
    return response


async def add_certificate(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await json_body(request, schemas.CertificatesPost)
    trusted = is_trusted(request, ctx.store)
    if body.get("token"):
        if not trusted:
            raise ApiError(403, "not authorized")
        return await _issue_token(request, ctx, body)
    if trusted:
        args = _certificate_args(request, body)
        await ctx.store.submit(command("certificate.add", **args))
        return _created(args["fingerprint"])
    digest = secret_hash(secret_of(str(body.get("trust_token") or body.get("password") or "")))
    with ctx.store.read() as state:
        known = digest in state.trust_tokens  # a quick refusal; apply decides for real
    if not known:
        raise ApiError(403, "not authorized")
    args = _certificate_args(request, body)
    await ctx.store.submit(command("trust_token.use", secret_hash=digest, certificate=args))
    return _created(args["fingerprint"])


async def _issue_token(request: web.Request, ctx: Context, body: dict[str, Any]) -> web.Response:
    name = str(body.get("name") or "")
    if not name:
        raise bad_request("A token needs a client name")
    listener = request.app.get(HTTPS)
    addresses = listen_addresses(listener.address) if listener else []
    if listener is None or not addresses:
        raise bad_request("Can't issue token when server isn't listening on network")
    with ctx.store.read() as state:
        lifetime = token_lifetime(state.config)
    secret = secrets.token_hex(32)
    expires_at = wall_time() + lifetime
    digest = secret_hash(secret)
    await ctx.store.submit(command("trust_token.add", name=name, secret_hash=digest,
                                   expires_at=expires_at))
    request_view = {k: v for k, v in body.items() if k not in ("password", "trust_token")}
    meta = {"client_name": name, "fingerprint": listener.identity.fingerprint,
            "addresses": addresses, "secret": secret, "expires_at": rfc3339(expires_at),
            "expiresAt": rfc3339(expires_at), "request": request_view}

    def prepare(op: Operation) -> None:
        op.metadata.update(meta)

    op = ctx.ops.start("Executing operation", _token_runner(ctx, digest, expires_at),
                       class_="token", cancellable=True, prepare=prepare)
    return async_operation(op.to_dict())


def _token_runner(ctx: Context, digest: str, expires_at: float) -> Any:
    """Keeps the token's operation running until the token is used, expires or is revoked."""
    import asyncio

    async def run(op: Operation) -> dict[str, Any] | None:
        queue = ctx.store.subscribe()
        try:
            while True:
                with ctx.store.read() as state:
                    if digest not in state.trust_tokens:
                        return None
                remaining = expires_at - wall_time()
                if remaining <= 0:
                    raise ApiError(400, "Token expired")
                try:
                    await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    continue
        except asyncio.CancelledError:
            if op.status == "Cancelling":  # revoked by DELETE, not a daemon shutdown
                await ctx.store.submit(command("trust_token.delete", secret_hash=digest))
            raise
        finally:
            ctx.store.unsubscribe(queue)

    return run


ROUTES_UNTRUSTED = [("POST", "/1.0/certificates", add_certificate)]
ROUTES = [
    ("GET", "/1.0/certificates", list_certificates),
    ("GET", "/1.0/certificates/{fingerprint}", get_certificate),
    ("PUT", "/1.0/certificates/{fingerprint}", update_certificate),
    ("PATCH", "/1.0/certificates/{fingerprint}", update_certificate),
    ("DELETE", "/1.0/certificates/{fingerprint}", delete_certificate),
]
