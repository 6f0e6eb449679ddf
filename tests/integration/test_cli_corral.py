"""The same CLI scenarios as ``test_cli_lxd_anchor`` (which runs them against real LXD),
run here against corral's own daemon: the CLI and the server agree with LXD's."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from devtools.harness import DaemonProcess
from tests.integration import test_cli_lxd_anchor as scenarios
from tests.integration.test_cli_lxd_anchor import (  # noqa: F401, F811 - collected here too
    instance,
    test_config_set_get_unset,
    test_errors_are_reported_like_lxc,
    test_exec_passes_output_and_exit_code_through,
    test_exec_streams_binary_stdin_and_stdout,
    test_file_push_and_pull_round_trip,
    test_images_and_version,
    test_info_describes_the_running_instance,
    test_list_shows_the_instance_in_every_format,
    test_snapshot_and_restore,
    test_stop_start_and_delete,
)

pytestmark = pytest.mark.real


@pytest.fixture(scope="module", autouse=True)
def point_cli_at_corral(daemon: DaemonProcess) -> Iterator[None]:
    saved = scenarios.SOCKET
    scenarios.SOCKET = str(daemon.socket)
    yield
    scenarios.SOCKET = saved


def test_interactive_exec_through_a_terminal(daemon: DaemonProcess) -> None:
    """``corral exec NAME -- sh`` on a TTY: a shell prompt, typed commands, exit code."""
    name = "ttytest"
    daemon.corral("launch", "busybox", name)
    try:
        _interactive(daemon, name)
    finally:
        daemon.corral("delete", "--force", name, check=False)


def _interactive(daemon: DaemonProcess, name: str) -> None:
    master, slave = pty.openpty()
    env = {**os.environ, "CORRAL_SOCKET": str(daemon.socket), "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "corral_cli.main", "exec", name,
                             "--", "sh"], stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    seen = b""
    try:
        # Type only once the prompt is up, as a person would: busybox's line editor asks
        # the terminal for the cursor position first, and this bare pty never answers.
        seen = _read_until(master, b"# ", 30)
        os.write(master, b"tty; echo marker-$((6*7)); exit 7\n")
        seen += _read_until(master, None, 30)
        assert proc.wait(timeout=30) == 7, seen
        assert b"marker-42" in seen and b"/dev/pts/" in seen, seen
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def _read_until(master: int, marker: bytes | None, timeout: float) -> bytes:
    """Terminal output until ``marker`` (or, with None, until the other side closes)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (marker is None or marker not in seen):
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every writer of the pty has gone
                break
            if not chunk:
                break
            seen += chunk
    return seen
