"""Progress on stderr for long work: operation metadata, uploads and downloads.

On a terminal one status line is rewritten in place (``\\r``), as ``lxc`` does; in logs
and pipes only occasional plain lines appear, so output stays readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, BinaryIO, TextIO

from corral_cli.format import byte_size_si

CHUNK = 256 * 1024


def operation_progress(metadata: Any) -> str | None:
    """The progress text LXD puts in operation metadata, if any.

    LXD uses keys ending in ``_progress`` holding text (``download_progress``,
    ``create_instance_from_image_unpack_progress``) and, in newer servers, a ``progress``
    object with ``stage``, ``percent`` and ``speed``.
    """
    if not isinstance(metadata, dict):
        return None
    structured = metadata.get("progress")
    if isinstance(structured, dict) and structured:
        stage = structured.get("stage", "")
        percent = structured.get("percent")
        speed = structured.get("speed")
        text = f"{stage}: {percent}%" if percent not in (None, "") else str(stage)
        return f"{text} ({speed}/s)" if speed else text
    for key in sorted(metadata):
        if key.endswith("_progress") and isinstance(metadata[key], str):
            return metadata[key]
    return None


class Progress:
    """One changing status line on stderr.

    On a terminal the line is rewritten in place with ``\\r``; otherwise each new text is
    printed on its own line, at most once a second and never for work that ends within a
    second, so logs stay short.
    """

    def __init__(self, fmt: str = "{}", stream: TextIO | None = None, quiet: bool = False) -> None:
        self.fmt = fmt
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self._last = ""
        self._width = 0
        # Off a terminal, nothing is printed during the first second: quick work stays quiet.
        self._printed_at = time.monotonic()

    def update(self, text: str) -> None:
        if self.quiet:
            return
        line = self.fmt.format(text)
        if line == self._last:
            return
        self._last = line
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            now = time.monotonic()
            if now - self._printed_at < 1.0:
                return
            self._printed_at = now
            self.stream.write(line + "\n")
        self.stream.flush()

    def update_op(self, op: Mapping[str, Any]) -> None:
        text = operation_progress(op.get("metadata"))
        if text:
            self.update(text)

    def done(self, final: str = "") -> None:
        """Clear the status line (terminal) and print ``final`` if given."""
        if self.quiet:
            return
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
        if final:
            self.stream.write(final + "\n")
        self.stream.flush()
        self._width = 0
        self._last = ""


async def stream_file(stream: BinaryIO, size: int, progress: Progress | None = None,
                      hasher: Any = None) -> AsyncIterator[bytes]:
    """A request body read from ``stream`` in chunks, reporting ``NN% (speed)`` as it goes.

    ``hasher`` (a hashlib object) sees every byte, so an upload also yields its
    fingerprint without a second read.
    """
    sent, started = 0, time.monotonic()
    while chunk := stream.read(CHUNK):
        sent += len(chunk)
        if hasher is not None:
            hasher.update(chunk)
        if progress is not None:
            speed = sent / max(time.monotonic() - started, 1e-3)
            percent = sent * 100 // size if size else 100
            progress.update(f"{percent}% ({byte_size_si(speed)}/s)")
        yield chunk
