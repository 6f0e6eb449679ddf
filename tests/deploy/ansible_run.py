"""Run the repository's Ansible playbook (``ansible/site.yml``) against test hosts, and read
its recap.

``ansible-playbook`` comes from the venv running the tests (``ansible-core`` is a test
extra). Everything Ansible would keep in the home directory (its temporary files and ssh
control sockets) goes to a scratch directory, and the ssh master connections it leaves
(``ControlPersist``) are ended by pid at teardown.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.netns import kill_pids

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "ansible" / "site.yml"
RECAP_LINE = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """``{host: {"ok": n, "changed": n, ...}}`` from the PLAY RECAP at the end of
    ``ansible-playbook``'s default output; empty when there is no recap."""
    _, found, tail = output.rpartition("PLAY RECAP")
    recap: dict[str, dict[str, int]] = {}
    if not found:
        return recap
    for line in tail.splitlines()[1:]:
        match = RECAP_LINE.match(line.strip())
        if match:
            recap[match.group(1)] = {k: int(v) for k, v in
                                     (pair.split("=") for pair in match.group(2).split())}
    return recap


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    seconds: float

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        return parse_recap(self.output)

    def changed(self) -> dict[str, int]:
        return {host: counts.get("changed", -1) for host, counts in self.recap.items()}


def ansible_playbook() -> str | None:
    """The ``ansible-playbook`` next to this interpreter, if ansible-core is installed."""
    candidate = Path(sys.executable).parent / "ansible-playbook"
    return str(candidate) if candidate.exists() else None


class Controller:
    """The Ansible controller of one test: an inventory per run, a shared scratch home."""

    def __init__(self, scratch: Path, key: Path, known_hosts: Path) -> None:
        self.scratch = scratch
        self.key = key
        self.known_hosts = known_hosts
        self.control_dir = scratch / "cp"
        self.runs = 0

    def inventory(self, hosts: Mapping[str, str], group_vars: Mapping[str, Any],
                  host_vars: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """Group ``corral`` with ``hosts`` (name -> address), reached as root with the
        test's key and only the host keys the test generated."""
        host_vars = host_vars or {}
        return {"corral": {
            "hosts": {name: {"ansible_host": ip, "corral_address": ip,
                             **host_vars.get(name, {})} for name, ip in hosts.items()},
            "vars": {
                "ansible_user": "root",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_ssh_private_key_file": str(self.key),
                "ansible_ssh_common_args": (f"-o UserKnownHostsFile={self.known_hosts} "
                                            "-o StrictHostKeyChecking=yes "
                                            "-o ConnectTimeout=5"),
                **group_vars,
            }}}

    def run(self, inventory: Mapping[str, Any], timeout: float = 480.0) -> PlaybookRun:
        """``ansible-playbook -i INVENTORY ansible/site.yml``; its output and duration."""
        binary = ansible_playbook()
        assert binary is not None, "ansible-core is not installed in the test venv"
        self.runs += 1
        path = self.scratch / f"inventory-{self.runs}.json"
        path.write_text(json.dumps(inventory, indent=2))
        env = {**os.environ,
               "PATH": f"{Path(binary).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               "ANSIBLE_CONFIG": str(PLAYBOOK.parent / "ansible.cfg"),
               "ANSIBLE_HOME": str(self.scratch / "ansible-home"),
               "ANSIBLE_LOCAL_TEMP": str(self.scratch / "ansible-tmp"),
               "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_dir),
               "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_LOG_PATH": str(self.scratch / f"ansible-{self.runs}.log")}
        started = time.monotonic()
        proc = subprocess.run([binary, "-i", str(path), str(PLAYBOOK)], env=env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False, cwd=self.scratch)
        return PlaybookRun(proc.returncode, proc.stdout + proc.stderr,
                           time.monotonic() - started)

    def close(self) -> None:
        """End the ssh master connections Ansible left behind (found by their control
        path, which only this controller uses)."""
        marker = str(self.control_dir)
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if cmdline.startswith("ssh") and marker in cmdline:
                pids.append(int(entry.name))
        kill_pids(pids, timeout=5)
