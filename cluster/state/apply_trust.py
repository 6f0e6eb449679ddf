"""Apply handlers for the trust store: certificates and single-use trust tokens.

Only the SHA-256 of a token's secret is ever replicated (the journal never
holds a usable secret). Expiry is judged by the command's own time, so every
replica decides alike; a refused command changes nothing.
"""

from __future__ import annotations

import re

from cluster.state.commands import Command, Result, fail, ok
from cluster.state.model import Certificate, State, TrustToken

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
CERT_TYPES = ("client", "metrics")
INVALID_TOKEN = "No matching certificate add operation found"  # LXD's words


def _certificate_problem(a: dict[str, object]) -> str:
    if not isinstance(a.get("fingerprint"), str) or not _HEX64.match(str(a["fingerprint"])):
        return "Invalid certificate fingerprint"
    if not isinstance(a.get("certificate"), str) or "BEGIN CERTIFICATE" not in str(
            a["certificate"]):
        return "Invalid certificate"
    return _fields_problem(a)


def _fields_problem(a: dict[str, object]) -> str:
    if a.get("type", "client") not in CERT_TYPES:
        return f"Unknown certificate type {a.get('type')!r}"
    if not isinstance(a.get("name", ""), str):
        return "Certificate name must be a string"
    projects = a.get("projects", [])
    if not isinstance(projects, list) or not all(isinstance(p, str) for p in projects):
        return "Certificate projects must be a list of names"
    return ""


def _new_certificate(a: dict[str, object]) -> Certificate:
    projects = a.get("projects", [])
    return Certificate(fingerprint=str(a["fingerprint"]), name=str(a.get("name", "")),
                       certificate=str(a["certificate"]), type=str(a.get("type", "client")),
                       restricted=bool(a.get("restricted", False)),
                       projects=list(projects) if isinstance(projects, list) else [],
                       description=str(a.get("description", "")))


def certificate_add(state: State, cmd: Command) -> Result:
    problem = _certificate_problem(cmd.args)
    if problem:
        return fail(400, problem)
    if cmd.args["fingerprint"] in state.certificates:
        return fail(409, "Certificate already in trust store")
    cert = _new_certificate(cmd.args)
    state.certificates[cert.fingerprint] = cert
    return ok({"fingerprint": cert.fingerprint})


def certificate_update(state: State, cmd: Command) -> Result:
    cert = state.certificates.get(cmd.args.get("fingerprint", ""))
    if cert is None:
        return fail(404, "Certificate not found")
    problem = _fields_problem({"type": cert.type, **cmd.args})
    if problem:
        return fail(400, problem)
    a = cmd.args
    cert.name = str(a.get("name", cert.name))
    cert.type = str(a.get("type", cert.type))
    cert.restricted = bool(a.get("restricted", cert.restricted))
    cert.projects = list(a.get("projects", cert.projects))
    cert.description = str(a.get("description", cert.description))
    return ok(None)


def certificate_delete(state: State, cmd: Command) -> Result:
    if state.certificates.pop(cmd.args.get("fingerprint", ""), None) is None:
        return fail(404, "Certificate not found")
    return ok(None)


def _prune_expired(state: State, now: float) -> None:
    for key in [k for k, t in state.trust_tokens.items() if t.expires_at and t.expires_at <= now]:
        del state.trust_tokens[key]


def token_add(state: State, cmd: Command) -> Result:
    a = cmd.args
    secret_hash = a.get("secret_hash")
    if not isinstance(secret_hash, str) or not _HEX64.match(secret_hash):
        return fail(400, "Invalid token secret hash")
    if not isinstance(a.get("name"), str) or not a["name"]:
        return fail(400, "A token needs a client name")
    expires_at = a.get("expires_at", 0.0)
    if not isinstance(expires_at, int | float) or (expires_at and expires_at <= cmd.time):
        return fail(400, "Invalid token expiry")
    _prune_expired(state, cmd.time)
    if secret_hash in state.trust_tokens:
        return fail(409, "Token already exists")
    state.trust_tokens[secret_hash] = TrustToken(secret_hash, a["name"], cmd.time,
                                                 float(expires_at))
    return ok({"name": a["name"]})


def token_use(state: State, cmd: Command) -> Result:
    """Consume a valid token and trust the certificate, in one step or not at all."""
    token = state.trust_tokens.get(cmd.args.get("secret_hash", ""))
    if token is None or (token.expires_at and token.expires_at <= cmd.time):
        return fail(403, INVALID_TOKEN)
    given = cmd.args.get("certificate")
    if not isinstance(given, dict):
        return fail(400, "Invalid certificate")
    cert_args = {**given, "name": token.name, "type": "client"}
    problem = _certificate_problem(cert_args)
    if problem:
        return fail(400, problem)
    if cert_args["fingerprint"] in state.certificates:
        return fail(409, "Certificate already in trust store")
    del state.trust_tokens[token.secret_hash]
    cert = _new_certificate(cert_args)
    state.certificates[cert.fingerprint] = cert
    return ok({"fingerprint": cert.fingerprint, "name": cert.name})


def token_delete(state: State, cmd: Command) -> Result:
    if state.trust_tokens.pop(cmd.args.get("secret_hash", ""), None) is None:
        return fail(404, "Token not found")
    return ok(None)


HANDLERS = {
    "certificate.add": certificate_add,
    "certificate.update": certificate_update,
    "certificate.delete": certificate_delete,
    "trust_token.add": token_add,
    "trust_token.use": token_use,
    "trust_token.delete": token_delete,
}
