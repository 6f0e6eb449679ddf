"""Forming a cluster: join tokens, accepting a member, and joining one.

::

    corral cluster add m2          (any member)   -> join token: server_name, cluster cert
                                                     fingerprint, member addresses, secret
    corral init --join TOKEN       (the new one)  -> POST /internal/cluster/accept on a member,
                                                     pinned to the token's fingerprint
        accepting member: commit member.join (single-use token), add the Raft voter
                          -> cluster certificate + key, Raft members
        joiner: adopt the cluster certificate, restart Raft with the members (its journal
                replaced by the cluster's), wait for its own member record, open its parts

Members trust each other by the shared cluster certificate (as in LXD); Raft traffic is
encrypted with a password derived from the cluster key, so a peer without the key is
refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cluster.state.clock import wall_time
from corral_shared.errors import ApiError, bad_request

DEFAULT_JOIN_TOKEN_SECONDS = 3 * 3600.0


@dataclass(frozen=True)
class JoinToken:
    server_name: str
    fingerprint: str
    addresses: list[str]
    secret: str
    expires_at: float

    def encode(self) -> str:
        body = {"server_name": self.server_name, "fingerprint": self.fingerprint,
                "addresses": self.addresses, "secret": self.secret,
                "expires_at": datetime.fromtimestamp(self.expires_at, UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ")}
        return base64.b64encode(json.dumps(body).encode()).decode()

    @classmethod
    def decode(cls, text: str) -> JoinToken:
        """Raises a 400 ApiError for anything that is not a well-formed join token."""
        try:
            body = json.loads(base64.b64decode(text.strip(), validate=True))
            expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
            token = cls(str(body["server_name"]), str(body["fingerprint"]),
                        [str(a) for a in body["addresses"]], str(body["secret"]),
                        expires.replace(tzinfo=UTC).timestamp())
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise bad_request("Invalid join token") from exc
        if not token.addresses or len(token.fingerprint) != 64:
            raise bad_request("Invalid join token")
        return token


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_hex(32)


def token_expiry(config: dict[str, str], now: float) -> float:
    value = config.get("cluster.join_token_expiry", "")
    seconds = DEFAULT_JOIN_TOKEN_SECONDS
    if value:
        units = {"S": 1, "M": 60, "H": 3600, "d": 86400}
        try:
            seconds = float(value[:-1]) * units[value[-1]] if value[-1] in units else float(value)
        except ValueError as exc:
            raise bad_request(f"Invalid cluster.join_token_expiry {value!r}") from exc
    return now + seconds


def accept_reply(cert_pem: str, key_pem: str, members: list[dict[str, Any]]) -> dict[str, Any]:
    """What an accepting member hands a joiner (over TLS, only for a valid token)."""
    return {"cluster_certificate": cert_pem, "cluster_key": key_pem, "members": members,
            "accepted_at": wall_time()}


def check_accept_body(body: dict[str, Any]) -> tuple[str, str, str, str]:
    """``(server_name, secret, address, architecture)`` of a join request."""
    try:
        name, secret, address = (str(body["server_name"]), str(body["secret"]),
                                 str(body["address"]))
    except KeyError as exc:
        raise bad_request(f"Join request lacks {exc.args[0]!r}") from exc
    if not secret:
        raise ApiError(403, "Invalid or already used join token")
    return name, secret, address, str(body.get("architecture", "x86_64"))
