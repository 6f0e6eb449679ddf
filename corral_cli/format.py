"""Pure rendering of command output, byte-compatible with the ``lxc`` client where it matters.

``lxc`` draws tables with olekukonko/tablewriter (centred upper-case headers, left-aligned
cells, a rule after every row), writes CSV with Go's ``encoding/csv`` and YAML with
``yaml.v2``; scripts parse those outputs, so this module reproduces their details.
Nothing here does I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

FORMATS = ("table", "csv", "json", "yaml")
TIME_LAYOUT = "%Y/%m/%d %H:%M %Z"  # Go's "2006/01/02 15:04 MST"

Rows = Sequence[Sequence[str]]


class FormatError(ValueError):
    """An unknown ``--format`` value."""


# --------------------------------------------------------------------------- tables

def go_title(name: str) -> str:
    """Header text as tablewriter's ``Title`` makes it: ``_`` and ``.`` become spaces, upper case.

    A dot between two digits (``0.5``) is kept, as tablewriter does.
    """
    chars = list(name)
    for i, char in enumerate(chars):
        if char == "_":
            chars[i] = " "
        elif char == ".":
            before = chars[i - 1] if i > 0 else " "
            after = chars[i + 1] if i < len(chars) - 1 else " "
            if not (_num_or_space(before) and _num_or_space(after)):
                chars[i] = " "
    text = "".join(chars).strip()
    if not text and name:
        text = " "
    return text.upper()


def _num_or_space(char: str) -> bool:
    return char.isdigit() or char == " "


def _center(text: str, width: int) -> str:
    gap = width - len(text)
    if gap <= 0:
        return text
    left = gap // 2
    return " " * left + text + " " * (gap - left)


def render_table(header: Sequence[str], rows: Rows) -> str:
    """An ``lxc``-style bordered table; multi-line cells span several text lines."""
    titles = [go_title(h) for h in header]
    split_rows = [[str(cell).split("\n") for cell in row] for row in rows]
    widths = [len(t) for t in titles]
    for row in split_rows:
        for i, lines in enumerate(row):
            widths[i] = max(widths[i], *(len(line) for line in lines))
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [rule, "|" + "|".join(f" {_center(t, w)} " for t, w in zip(titles, widths, strict=True))
           + "|", rule]
    for row in split_rows:
        height = max((len(lines) for lines in row), default=1)
        for n in range(height):
            cells = [lines[n] if n < len(lines) else "" for lines in row]
            out.append("|" + "|".join(f" {c.ljust(w)} " for c, w in zip(cells, widths, strict=True))
                       + "|")
        out.append(rule)
    return "\n".join(out) + "\n"


def _csv_field(field: str) -> str:
    """Go ``encoding/csv`` quoting: only when needed, and for a leading space."""
    if field == "":
        return field
    needs = (field == "\\." or any(c in field for c in ',"\r\n')
             or field[0] in " \t\n\v\f\r")
    if not needs:
        return field
    return '"' + field.replace('"', '""') + '"'


def render_csv(rows: Rows) -> str:
    """Header-less CSV rows, as ``lxc list --format csv`` prints them."""
    return "".join(",".join(_csv_field(str(c)) for c in row) + "\n" for row in rows)


def render_json(data: Any) -> str:
    """Compact JSON on one line, as Go's ``json.Encoder`` writes it."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n"


def render_yaml(data: Any, sort_keys: bool = False) -> str:
    """Block-style YAML, keys in the server's order unless ``sort_keys``. (PyYAML is
    imported here, by the commands that print YAML: ~25 ms of every other command.)"""
    from corral_cli.yaml_format import render_yaml as render  # CLI start-up speed

    return render(data, sort_keys)


def render(fmt: str, header: Sequence[str], rows: Rows, raw: Any) -> str:
    """Render a listing: ``rows`` for table and csv, ``raw`` (the API objects) for json and yaml."""
    if fmt == "table":
        return render_table(header, rows)
    if fmt == "csv":
        return render_csv(rows)
    if fmt == "json":
        return render_json(raw)
    if fmt == "yaml":
        return render_yaml(raw)
    raise FormatError(f'Invalid format "{fmt}"')


# --------------------------------------------------------------------------- sorting

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort key where ``c2`` comes before ``c10``."""
    return [(0, int(part)) if part.isdigit() else (1, part)
            for part in _DIGITS.split(text) if part]


def sort_rows(rows: Rows) -> list[list[str]]:
    """Rows ordered naturally column by column, as ``lxc`` sorts its listings."""
    return sorted((list(r) for r in rows), key=lambda r: [natural_key(c) for c in r])


# --------------------------------------------------------------------------- units and times

def byte_size_iec(size: int | float, precision: int = 2) -> str:
    """``1.53MiB`` style (LXD's ``GetByteSizeStringIEC``)."""
    if size < 1024:
        return f"{int(size)}B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.{precision}f}{unit}"
    return f"{value / 1024:.{precision}f}EiB"


def byte_size_si(size: int | float, precision: int = 2) -> str:
    """``690B`` / ``1.04MB`` style (LXD's ``GetByteSizeString``)."""
    if size < 1000:
        return f"{int(size)}B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if value < 1000:
            return f"{value:.{precision}f}{unit}"
    return f"{value / 1000:.{precision}f}EB"


_FRACTION = re.compile(r"\.(\d+)")


def parse_time(text: str | None) -> datetime | None:
    """An LXD RFC 3339 timestamp (nanoseconds allowed); ``None`` for Go's zero time or junk."""
    if not text:
        return None
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when.year <= 1970:  # LXD reports unset times as year 1 or the epoch
        return None
    return when


def format_time(text: str | None, layout: str = TIME_LAYOUT, local: bool = True) -> str:
    """A timestamp in ``lxc``'s layout, local time by default; empty when unset."""
    when = parse_time(text)
    if when is None:
        return ""
    return (when.astimezone() if local else when.astimezone(UTC)).strftime(layout)


def upload_date(text: str | None) -> str:
    """``Nov 27, 2026 at 11:14am (UTC)``, the date layout of ``lxc image list``."""
    when = parse_time(text)
    if when is None:
        return ""
    when = when.astimezone(UTC)
    hour = when.hour % 12 or 12
    meridian = "am" if when.hour < 12 else "pm"
    return f"{when:%b} {when.day}, {when.year} at {hour}:{when:%M}{meridian} (UTC)"
