"""Telling a harmless re-send from a replica that has diverged.

pysyncobj 0.3.17 logs CRITICAL "truncating already-applied log entries ... may have
diverged" whenever a leader sends again entries that a follower has applied already (a
slow reply made the leader reset the follower's next index; seen at joins). Raft re-sends
committed entries unchanged, so usually nothing diverged, and ``ResentEntries`` keeps that
record at INFO. But an entry sent again that differs from the one this replica applied
(another command, or another term) means this replica's state is no longer the cluster's:
``ResentCheck`` compares them and logs that CRITICAL.

pysyncobj has the two halves in different places: the applied entries it truncates (in
``__deleteEntriesFrom``) and the entries written in their place, which reach the log in
the same message or, when the leader sends them in several batches, in later ones. So
the truncated entries are remembered and compared with the log after every message
(``_PromptSyncObj`` in ``raft.py`` calls both).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

# pysyncobj's log entry: (command bytes, index, term).
Entry = tuple[Any, int, int]
Lookup = Callable[[int, int], Sequence[Entry]]  # (first index, count) -> entries in the log


class ResentEntries(logging.Filter):
    """pysyncobj's "truncating already-applied log entries" at INFO: it fires on every
    harmless re-send, and ``ResentCheck`` is what says CRITICAL when an entry differs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno == logging.CRITICAL
                and str(record.msg).startswith("truncating already-applied")):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def differing(applied: Mapping[int, tuple[Any, int]], entries: Iterable[Entry]) -> list[int]:
    """The indexes at which an entry of ``entries`` is not the ``(command, term)`` this
    replica applied there; indexes absent from ``applied`` are not compared."""
    return [index for data, index, term in entries
            if index in applied and applied[index] != (data, term)]


class ResentCheck:
    """Applied entries truncated by a re-send, waiting for the entries that replace them.

    ``pending`` is bounded by the re-sent span (at most the entries the leader sends
    again); ``forget`` empties it when a snapshot replaces the log and state."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[Any, int]] = {}

    def truncated(self, entries: Iterable[Entry], last_applied: int) -> None:
        """Remember the entries about to be truncated that this replica has applied."""
        for data, index, term in entries:
            if index <= last_applied:
                self.pending[index] = (data, term)

    def check(self, lookup: Lookup) -> list[int]:
        """Compare every remembered entry that the log holds again; those differing are
        logged CRITICAL and returned. Entries not re-sent yet stay remembered."""
        if not self.pending:
            return []
        low = min(self.pending)
        entries = list(lookup(low, max(self.pending) - low + 1))
        bad = differing(self.pending, entries)
        for _, index, _ in entries:
            self.pending.pop(index, None)
        for index in bad:
            log.critical("log entry %d sent again by the leader differs from the one this "
                         "replica applied: its state has diverged from the cluster's", index)
        return bad

    def forget(self) -> None:
        """A snapshot replaced the log and the state: nothing is left to compare."""
        self.pending.clear()
