"""Where a daemon's state lives by default: shared by the daemon (``node_agent.paths``)
and the CLI, which finds the daemon's unix socket there and imports nothing of the host."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DIR = "/var/lib/corral"


def corral_dir() -> Path:
    """The state directory named by ``CORRAL_DIR`` (as ``LXD_DIR`` for ``lxc``)."""
    return Path(os.environ.get("CORRAL_DIR") or DEFAULT_DIR)
