"""ETags of the records clients update with ``If-Match``, computed from the committed
record alone (pure and deterministic), so ``apply`` checks a client's precondition
against exactly what every replica holds, and ``GET`` shows the same value.

Like LXD, an ETag is the SHA-256 of the record's writable fields (LXD hashes them as
JSON too). The instance fields are those corral's ETag has always covered, so ETags
that clients hold stay valid across this change.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cluster.state.model import Instance, Profile

INSTANCE_FIELDS = ("architecture", "config", "devices", "ephemeral", "profiles", "description")


def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def instance(inst: Instance) -> str:
    """The instance's ETag, as ``GET /1.0/instances/<name>`` sends it."""
    return _digest({"architecture": inst.architecture, "config": inst.config,
                    "devices": inst.devices, "ephemeral": inst.ephemeral,
                    "profiles": inst.profiles, "description": inst.description})


def profile(prof: Profile) -> str:
    """The profile's ETag, as ``GET /1.0/profiles/<name>`` sends it (LXD hashes the same
    three fields)."""
    return _digest({"config": prof.config, "description": prof.description,
                    "devices": prof.devices})


def mismatch(if_match: object, current: str) -> str:
    """Why a client's ``If-Match`` (carried in the command; ``None`` or ``""`` when it
    sent none) refuses the change, or ``""``: LXD's 412 message."""
    if if_match is None or if_match == "":
        return ""
    if not isinstance(if_match, str):
        return "If-Match must be a string"
    return "" if if_match == current else f"ETag doesn't match: {current} vs {if_match}"
