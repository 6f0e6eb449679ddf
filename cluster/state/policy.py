"""When the Raft log is compacted by time, and how tests shorten it.

pysyncobj compacts (dumps the state, drops the log before it) after
``logCompactionMinEntries`` entries or ``logCompactionMinTime`` seconds since the member
started or last dumped, whichever comes first. Corral keeps pysyncobj's 300 s. The chaos
suite restarts members far more often than every 300 s, so without a shorter time no
member would ever hold a snapshot to damage or to send; it sets
``CORRAL_TEST_COMPACTION_SECONDS`` in the daemons' environment (tests only).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

COMPACTION_SECONDS_ENV = "CORRAL_TEST_COMPACTION_SECONDS"
DEFAULT_COMPACTION_SECONDS = 300.0


def compaction_seconds(environ: Mapping[str, str] | None = None) -> float:
    """pysyncobj's ``logCompactionMinTime``: 300 s, or the test override when it is a
    positive number."""
    raw = (os.environ if environ is None else environ).get(COMPACTION_SECONDS_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_COMPACTION_SECONDS
    except ValueError:
        return DEFAULT_COMPACTION_SECONDS
    return seconds if seconds > 0 else DEFAULT_COMPACTION_SECONDS
