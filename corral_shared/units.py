"""Byte sizes written the way LXD users write them: ``"256MiB"``, ``"512MB"``, ``"1073741824"``.

The API layer validates ``limits.memory`` (and disk sizes) with these functions and the LXC
driver converts with the same ones, so a value the API accepts is a value the driver can apply.

Accepted: a non-negative number (integer or decimal, no exponent) with an optional suffix, an
optional space between. Suffixes are case-sensitive as in LXD (``B``, ``kB``/``KB``, ``MB``,
``GB``, ``TB``, ``PB``, ``EB`` decimal; ``KiB`` ... ``EiB`` binary). Fractions of a byte are
rounded down. Anything else raises :class:`UnitError` (a ``ValueError``).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MAX_BYTES = 2**63 - 1

_MULTIPLIERS: dict[str, int] = {
    "": 1,
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "PB": 1000**5,
    "EB": 1000**6,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
    "PiB": 1024**5,
    "EiB": 1024**6,
}

_SIZE_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?) ?(?P<suffix>[A-Za-z]*)")
_PERCENT_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)%")


class UnitError(ValueError):
    """A size string that is not a valid size."""


def _number(text: str, whole: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the regexes only let digits through
        raise UnitError(f"invalid size {whole!r}") from exc


def parse_size(text: str) -> int:
    """Bytes in ``text`` (``"1GiB"`` -> 1073741824); raises :class:`UnitError` on garbage."""
    if not isinstance(text, str):
        raise UnitError(f"invalid size {text!r}: not a string")
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise UnitError(f"invalid size {text!r}: expected a number with an optional unit "
                        f"such as 512MiB or 1GB")
    suffix = match["suffix"]
    if suffix not in _MULTIPLIERS:
        raise UnitError(f"invalid size {text!r}: unknown unit {suffix!r} "
                        f"(use one of {', '.join(u for u in _MULTIPLIERS if u)})")
    value = int(_number(match["num"], text) * _MULTIPLIERS[suffix])
    if value > MAX_BYTES:
        raise UnitError(f"invalid size {text!r}: too large")
    return value


def parse_memory_limit(text: str, total: int) -> int:
    """Bytes for a ``limits.memory`` value: a size, or a percentage of ``total`` bytes.

    A limit must be positive; ``"50%"`` of a 4 GiB host is 2 GiB. Raises :class:`UnitError`.
    """
    match = _PERCENT_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is not None:
        percent = _number(match["num"], text)
        if not 0 < percent <= 100:
            raise UnitError(f"invalid memory limit {text!r}: a percentage must be in (0, 100]")
        value = int(total * percent / 100)
    else:
        value = parse_size(text)
    if value <= 0:
        raise UnitError(f"invalid memory limit {text!r}: must be larger than zero")
    return value
