"""A counter left running in a container, to tell a restored process from a new boot."""

from __future__ import annotations

import time

from devtools.harness import DaemonProcess

# In its own session (setsid): CRIU refuses a session led from outside the container,
# which is what a process left behind by lxc-attach would be in.
COUNTER = ("setsid sh -c 'echo $$ > /tmp/pid; i=0; while true; do i=$((i+1)); "
           "echo $i > /tmp/count; sleep 0.1; done' </dev/null >/dev/null 2>&1 &")


def start_counter(daemon: DaemonProcess, name: str) -> None:
    daemon.corral("exec", name, "--", "sh", "-c", COUNTER)


def count(daemon: DaemonProcess, name: str) -> int:
    for _ in range(50):  # `echo $i > f` truncates before it writes
        out = daemon.corral("exec", name, "--", "cat", "/tmp/count", check=False).stdout
        if out.strip().isdigit():
            return int(out)
        time.sleep(0.05)
    raise AssertionError(f"{name}: /tmp/count stays empty")


def counter_pid(daemon: DaemonProcess, name: str) -> str:
    """The counter's pid if that process is alive ("" after a fresh boot)."""
    return daemon.corral("exec", name, "--", "sh", "-c",
                         "kill -0 $(cat /tmp/pid) && cat /tmp/pid",
                         check=False).stdout.decode().strip()
