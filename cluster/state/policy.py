"""How tests make members compact their Raft log by time.

The daemon compacts by journal size (cluster/state/compaction.py); pysyncobj's own
thresholds, ``logCompactionMinEntries`` entries or ``logCompactionMinTime`` seconds since
the member started or last dumped, are set out of reach. The chaos suite's runs write far
less than the size threshold, so no member would ever hold a snapshot to damage or to
send; it sets ``CORRAL_TEST_COMPACTION_SECONDS`` in the daemons' environment (tests only)
and they also compact that often.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cluster.state.compaction import NEVER_SECONDS

COMPACTION_SECONDS_ENV = "CORRAL_TEST_COMPACTION_SECONDS"
DEFAULT_COMPACTION_SECONDS = NEVER_SECONDS


def compaction_seconds(environ: Mapping[str, str] | None = None) -> float:
    """pysyncobj's ``logCompactionMinTime``: never, or the test override when it is a
    positive number."""
    raw = (os.environ if environ is None else environ).get(COMPACTION_SECONDS_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_COMPACTION_SECONDS
    except ValueError:
        return DEFAULT_COMPACTION_SECONDS
    return seconds if seconds > 0 else DEFAULT_COMPACTION_SECONDS
