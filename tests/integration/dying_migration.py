"""A process that sends a VM live (``migration.migrate_out``) and dies by SIGKILL at a chosen
point, as a member's daemon killed -9 while it follows a migration: QEMU carries on alone.

Run as ``python -m tests.integration.dying_migration`` with a JSON document on stdin:
``vmpath`` (the source QemuDriver's), ``name``, ``incoming`` (``Incoming.to_json``),
``credentials`` (three PEM strings) and ``at``:

- ``disk``: at the first report of the disk mirror (QEMU mirrors on, the RAM never goes);
- ``switchover``: once QEMU has stopped the guest before the switch-over and waits for a
  ``migrate-continue`` that will never come.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from node_agent.drivers.qemu import QemuDriver
from node_agent.drivers.qemu import migration as mig
from node_agent.drivers.qemu.migration import source


def _die(*_: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    args = json.load(sys.stdin)
    driver = QemuDriver(Path(args["vmpath"]), accel="tcg")
    name = args["name"]

    def at_switchover(*_: Any) -> None:  # in place of following the migration's events
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if driver._qmp(name, "query-migrate").get("status") == "pre-switchover":
                _die()
            time.sleep(0.02)
        raise SystemExit("the migration never reached its switch-over")

    def progress(report: dict[str, Any]) -> None:
        if args["at"] == "disk" and report.get("phase") == "disk":
            _die()

    if args["at"] == "switchover":
        source.follow_events = at_switchover  # type: ignore[assignment]
        source.follow_polled = at_switchover  # type: ignore[assignment]
    credentials = mig.Credentials(*(pem.encode() for pem in args["credentials"]))
    mig.migrate_out(driver, name, mig.Incoming.from_json(args["incoming"]), credentials,
                    progress=progress, timeout=120)
    raise SystemExit(f"migrate_out returned before dying at {args['at']}")


if __name__ == "__main__":
    main()
