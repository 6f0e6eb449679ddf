"""One docker-compose project of docker-compose.test.yml, driven from Python for the test:
``up``, ``corral`` inside a member, the cluster's members, ``kill``, ``down``.

Compose v1 (Debian's ``docker-compose`` 1.29, RECIPES) names containers
``PROJECT_SERVICE_1``; commands inside members go through ``docker exec`` (a compose
``exec`` costs half a second of Python start-up each).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.dockerd import DockerError, Engine, run

COMPOSE = "/usr/bin/docker-compose"
ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.test.yml"
MEMBERS = ("m1", "m2", "m3")


@dataclass(frozen=True)
class ComposeProject:
    """``docker-compose -p NAME -f FILE`` on ``engine`` with the member image ``image``."""

    engine: Engine
    name: str
    image: str
    file: Path = COMPOSE_FILE

    def env(self) -> dict[str, str]:
        return dict(self.engine.env(), CORRAL_COMPOSE_IMAGE=self.image)

    def compose(self, *args: str, timeout: float = 300.0,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """``docker-compose ARGS``; DockerError on failure (with ``check``) or timeout."""
        return run([COMPOSE, "--ansi", "never", "-p", self.name, "-f", str(self.file), *args],
                   self.env(), timeout=timeout, check=check)

    def container(self, service: str) -> str:
        return f"{self.name}_{service}_1"

    def corral(self, service: str, *args: str, timeout: float = 60.0,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        """``corral ARGS`` inside ``service``'s container."""
        return self.engine.docker("exec", self.container(service), "corral", *args,
                                  timeout=timeout, check=check)

    def members(self, service: str) -> list[dict[str, Any]] | None:
        """``cluster list --format json`` through ``service``; None while it cannot say."""
        out = self.corral(service, "cluster", "list", "--format", "json", timeout=30.0,
                          check=False)
        if out.returncode != 0:
            return None
        try:
            found = json.loads(out.stdout)
        except ValueError:
            return None
        return found if isinstance(found, list) else None

    def state(self, service: str) -> str:
        """The container's state (``running``, ``exited``...), ``missing`` if there is none."""
        out = self.engine.docker("inspect", "--format", "{{.State.Status}}",
                                 self.container(service), check=False)
        return out.stdout.strip() if out.returncode == 0 else "missing"

    def logs(self, *services: str) -> str:
        out = self.compose("logs", "--no-color", *services, timeout=60.0, check=False)
        return out.stdout + out.stderr

    def wait_ready(self, size: int = len(MEMBERS), timeout: float = 180.0,
                   services: tuple[str, ...] = MEMBERS) -> list[dict[str, Any]]:
        """Wait until ``services[0]`` lists ``size`` members, all Online; returns them.
        DockerError, with the members' logs, if a member exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            members = self.members(services[0]) or []
            if len(members) == size and all(m.get("status") == "Online" for m in members):
                return members
            gone = [s for s in services if self.state(s) not in ("running", "created")]
            if gone or time.monotonic() > deadline:
                why = (f"member(s) {', '.join(gone)} stopped" if gone
                       else f"not within {timeout:g} s")
                raise DockerError(f"no cluster of {size} Online members ({why}); last seen "
                                  f"{members}\n{self.logs()[-6000:]}")
            time.sleep(0.5)

    def down(self) -> None:
        """Stop and remove the containers, network and volumes (also after a failure)."""
        self.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300.0)
