"""Host tools and sysctls, with their failures translated to NetworkCommandError once."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from node_agent.network.errors import NetworkCommandError

COMMAND_TIMEOUT = 10.0


def run(argv: list[str], timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a host tool and return its stdout; failure or timeout raises with its stderr."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkCommandError(f"{shlex.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        raise NetworkCommandError(f"{shlex.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def write_sysctl(key: str, value: str) -> None:
    """Set ``/proc/sys/KEY`` unless it already holds ``value``."""
    path = Path("/proc/sys", key)
    try:
        if path.read_text().strip() != value:
            path.write_text(value)
    except OSError as exc:
        raise NetworkCommandError(f"cannot set {key}={value}: {exc}") from exc
