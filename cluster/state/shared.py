"""One string object for the values that millions of records repeat.

Every replica builds its records from unpickled commands, so each instance got its own
copy of its member's name, its image fingerprint, its type, architecture, profile
names and config keys and values (a few hundred bytes an instance at a million).
Interning them makes all records share one object each, and a snapshot then pickles
each one once (pickle's memo), which shrinks dumps as well. Only short strings are
interned: a long config value (cloud-init user data) is rarely repeated.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

LONGEST = 128  # characters; longer strings are kept as they are
T = TypeVar("T")


def shared(value: T) -> T:
    """``value`` itself, or the one interned copy of it if it is a short string."""
    if isinstance(value, str) and type(value) is str and len(value) <= LONGEST:
        return sys.intern(value)  # type: ignore[return-value]
    return value


def shared_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` whose short keys and values are shared."""
    return {shared(key): shared(value) for key, value in config.items()}
