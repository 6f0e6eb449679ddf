"""LXD's status codes (LXD ``shared/api/status_code.go``), written out once.

Instances, operations and the drivers all answer with LXD's status names and their
numeric codes; the API's JSON, the drivers' state and the operations registry read the
numbers from here, so a name cannot map to two codes. :data:`CODES` maps a status name
to its code; :func:`code_of` falls back to ``Error`` (112) for a name LXD does not know.
"""

from __future__ import annotations

from typing import Final

OPERATION_CREATED: Final = 100
STARTED: Final = 101
STOPPED: Final = 102
RUNNING: Final = 103
CANCELLING: Final = 104
PENDING: Final = 105
STARTING: Final = 106
STOPPING: Final = 107
ABORTING: Final = 108
FREEZING: Final = 109
FROZEN: Final = 110
THAWED: Final = 111
ERROR: Final = 112
READY: Final = 113
SUCCESS: Final = 200
FAILURE: Final = 400
CANCELLED: Final = 401

CODES: Final[dict[str, int]] = {
    "Operation created": OPERATION_CREATED, "Started": STARTED, "Stopped": STOPPED,
    "Running": RUNNING, "Cancelling": CANCELLING, "Pending": PENDING,
    "Starting": STARTING, "Stopping": STOPPING, "Aborting": ABORTING,
    "Freezing": FREEZING, "Frozen": FROZEN, "Thawed": THAWED, "Error": ERROR,
    "Ready": READY, "Success": SUCCESS, "Failure": FAILURE, "Cancelled": CANCELLED,
}


def code_of(status: str) -> int:
    """The code of LXD status ``status`` (``"Running"`` -> 103); ``Error`` (112) if unknown."""
    return CODES.get(status, ERROR)


def status_pair(status: str) -> tuple[str, int]:
    """``(status, code)``, the shape the drivers report: ``("Frozen", 110)``."""
    return status, code_of(status)
