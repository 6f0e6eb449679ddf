"""Sizes as LXD writes them in storage config (``size: 5GiB``), and the default size of a
loop-file pool.

Pure functions: no I/O.
"""

from __future__ import annotations

import re

GIB = 1 << 30
MIN_LOOP = 5 * GIB  # LXD's rule for a loop pool's default size: 20% of the free space
MAX_LOOP = 30 * GIB  # of the disk holding it, at least 5 GiB and at most 30 GiB
_UNITS = {"": 1, "B": 1,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15, "EB": 10**18,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40, "PIB": 1 << 50,
          "EIB": 1 << 60}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes of ``text``: a number of bytes, or a number with a decimal (kB, MB, GB, TB, PB,
    EB) or binary (KiB, MiB, GiB, ...) unit, as LXD accepts them; a bare ``G``/``M``/``K``
    counts as binary, as ``truncate -s`` does. Raises ValueError for anything else or a
    size under one byte."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = _SIZE.match(str(text))
        if match is None:
            raise ValueError(f"Invalid size {text!r}: expected e.g. 5GiB or 500MB")
        value, unit = float(match.group(1)), match.group(2).upper()
    if unit in ("K", "M", "G", "T", "P", "E"):
        unit += "IB"
    if unit not in _UNITS:
        raise ValueError(f"Invalid size {text!r}: unknown unit {unit!r}")
    size = int(value * _UNITS[unit])
    if size < 1:
        raise ValueError(f"Invalid size {text!r}: must be positive")
    return size


def default_loop_size(free_bytes: int) -> int:
    """LXD's default for a loop-file pool: a fifth of the free space, within 5-30 GiB,
    rounded down to whole GiB. The file is sparse: it takes only what is written."""
    return max(MIN_LOOP, min(MAX_LOOP, free_bytes // 5)) // GIB * GIB
