"""``python -m node_agent.drivers.qemu.vm_exec VM_DIR [--timeout S] -- CMD...``

Runs one command in a VM through its agent and passes the command's stdout, stderr and exit
code through (255 and a message on stderr when the agent cannot be reached). This is what
``QemuDriver.exec_argv`` returns, so the node agent's exec machinery runs it like
``lxc-attach``. Kept out of the package's imports so ``-m`` runs it cleanly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from node_agent.drivers.base import DriverError
from node_agent.drivers.qemu.agent import exec_in_vm


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral-vm-exec")
    parser.add_argument("vm_dir", type=Path)
    parser.add_argument("--timeout", type=float, default=0)
    parser.add_argument("command", nargs="+")
    options = parser.parse_args(args)
    try:
        result = exec_in_vm(options.vm_dir, options.command, options.timeout)
    except DriverError as exc:
        print(f"corral-vm-exec: {exc}", file=sys.stderr)
        return 255
    sys.stdout.buffer.write(result.stdout)
    sys.stderr.buffer.write(result.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
