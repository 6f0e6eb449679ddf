"""The wall clock a daemon stamps on what it records, with a test-only offset.

``CORRAL_TEST_CLOCK_OFFSET`` (seconds, a float, may be negative) is TEST-ONLY: the chaos
suite and the clock-skew tests start one daemon with it to play a member whose clock is
off, because a time namespace does not shift ``CLOCK_REALTIME``. It is read once per
process and added to every wall-clock time the daemon stamps (commands, operations,
events, tokens). Never set it in production: nothing about liveness depends on it
(liveness is judged on the leader's own monotonic clock, ``cluster.membership.liveness``), but
token expiry and displayed times do.
"""

from __future__ import annotations

import functools
import logging
import os
import time

TEST_CLOCK_OFFSET_ENV = "CORRAL_TEST_CLOCK_OFFSET"

log = logging.getLogger(__name__)


@functools.cache
def offset() -> float:
    """The test-only offset in seconds (0 when unset or not a number)."""
    raw = os.environ.get(TEST_CLOCK_OFFSET_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        log.error("%s=%r is not a number of seconds; ignored", TEST_CLOCK_OFFSET_ENV, raw)
        return 0.0
    log.warning("test-only clock offset: this daemon's wall clock is shifted by %+g s", value)
    return value


def wall_time() -> float:
    """``time.time()`` plus the test-only offset: for stamps, never for measuring."""
    return time.time() + offset()
