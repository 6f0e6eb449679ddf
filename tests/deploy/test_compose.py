"""docker-compose.test.yml for real: three corral members in containers form a cluster on
``up``, run a real LXC container that every member sees, and keep taking writes after the
Raft leader's container is killed; a member that cannot join says why and exits non-zero.

The engine is the machine's if one answers, else a private ``dockerd`` started and stopped
here (``devtools/dockerd.py``); the member image is built locally, or found by its content
tag (``devtools/compose_image.py``). Everything the tests make is removed at the end, also
on failure: ``compose down -v``, and the private engine with whatever it still holds.
``make test-compose`` runs this file alone (with ``-s``, to see the figures it prints).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.membership.joining import JoinToken
from devtools import dockerd
from devtools.compose_image import ensure_image
from devtools.compose_project import COMPOSE, MEMBERS, ComposeProject

pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]

FAILOVER_BUDGET = 30.0  # s from the leader's kill to an acknowledged write


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    absent = [p for p in (dockerd.DOCKERD, dockerd.DOCKER, COMPOSE) if not Path(p).exists()]
    if absent:
        return (f"{', '.join(absent)} missing: apt-get install docker.io docker-compose "
                "(make test-compose installs them)")
    return None


@pytest.fixture(scope="module")
def engine() -> Iterator[dockerd.Engine]:
    if (why := _missing()) is not None:
        pytest.skip(why)
    with dockerd.engine() as found:
        yield found


@pytest.fixture(scope="module")
def image(engine: dockerd.Engine) -> str:
    started = time.monotonic()
    tag = ensure_image(engine)
    print(f"\nmember image {tag} ready in {time.monotonic() - started:.1f} s")
    return tag


@pytest.fixture(scope="module")
def project(engine: dockerd.Engine, image: str) -> Iterator[ComposeProject]:
    """The compose project, up and formed into a cluster of three; down at the end."""
    project = ComposeProject(engine, f"corraltest{secrets.token_hex(4)}", image)
    try:
        started = time.monotonic()
        project.compose("up", "-d")
        members = project.wait_ready()
        print(f"\ncompose up -> 3 members Online in {time.monotonic() - started:.1f} s: "
              f"{[m['server_name'] for m in members]}")
        yield project
    finally:
        project.down()


def _until(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.5)
    return found


def _instances(project: ComposeProject, service: str) -> dict[str, dict[str, Any]]:
    out = project.corral(service, "list", "--format", "json")
    return {i["name"]: i for i in json.loads(out.stdout)}


def test_up_makes_one_cluster_of_three_voting_members(project: ComposeProject) -> None:
    for service in MEMBERS:  # every member sees the same three, from its own replica
        members = project.members(service)
        assert members is not None, project.logs(service)
        assert sorted(m["server_name"] for m in members) == list(MEMBERS)
        assert all(m["status"] == "Online" and "database" in m["roles"] for m in members)
        assert sum("database-leader" in m["roles"] for m in members) == 1
    urls = {m["server_name"]: m["url"] for m in project.members("m1") or []}
    for service in MEMBERS:  # each joined with the address of its own container
        address = project.engine.docker(
            "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            project.container(service)).stdout.strip()
        assert urls[service] == f"https://{address}:8443"
    logs = project.logs()
    assert "corral-compose[m1]: bootstrapped the cluster" in logs
    assert "corral-compose[m2]: joined the cluster" in logs
    assert "corral-compose[m3]: joined the cluster" in logs


def test_a_container_launched_through_one_member_runs_and_every_member_sees_it(
        project: ComposeProject) -> None:
    project.corral("m1", "image", "build", "busybox", timeout=120)
    project.corral("m1", "launch", "busybox", "c1", timeout=120)
    for service in MEMBERS:
        c1 = _instances(project, service)["c1"]
        assert c1["status"] == "Running", c1
        assert c1["location"] in MEMBERS
    # A real LXC container, reached through a member that may not host it (relayed).
    out = project.corral("m3", "exec", "c1", "--", "hostname")
    assert out.stdout.strip() == "c1"
    host = _instances(project, "m2")["c1"]["location"]
    monitors = project.engine.docker("exec", project.container(host), "ps", "-eo", "args")
    assert "[lxc monitor] /var/lib/corral/containers c1" in monitors.stdout


def test_a_member_with_a_forged_token_exits_non_zero_and_says_why(
        project: ComposeProject) -> None:
    """A token of this cluster (fingerprint, addresses) whose secret is wrong: the members
    refuse it, and the joiner stops its daemon and exits 1 with one clear line."""
    issued = project.corral("m2", "cluster", "add", "m4").stdout.strip().splitlines()[-1]
    forged = dataclasses.replace(JoinToken.decode(issued), secret=secrets.token_hex(32))
    out = project.compose("run", "--rm", "-T", "-e", f"CORRAL_JOIN_TOKEN={forged.encode()}",
                          "-e", "CORRAL_MEMBER=m4", "extra", check=False, timeout=180)
    assert out.returncode == 1, out.stdout + out.stderr
    assert ("corral-compose[m4]: FATAL: cannot join the cluster as m4"
            in out.stdout + out.stderr), out.stdout + out.stderr
    assert "Invalid or already used join token" in out.stdout + out.stderr
    assert sorted(m["server_name"] for m in project.members("m1") or []) == list(MEMBERS)


def test_a_member_without_a_token_gives_up_and_says_why(project: ComposeProject) -> None:
    """No token is published for it (as when the bootstrap member never comes up)."""
    out = project.compose("run", "--rm", "-T", "-e", "CORRAL_JOIN_TIMEOUT=3", "-e",
                          "CORRAL_MEMBER=m5", "extra", check=False, timeout=180)
    assert out.returncode == 1, out.stdout + out.stderr
    assert ("corral-compose[m5]: FATAL: no join token for m5 in /run/corral-tokens after 3s"
            in out.stdout + out.stderr), out.stdout + out.stderr


def test_the_cluster_takes_writes_after_the_leader_is_killed(project: ComposeProject) -> None:
    members = project.members("m1") or []
    leader = next(m["server_name"] for m in members if "database-leader" in m["roles"])
    survivors = [s for s in MEMBERS if s != leader]
    project.engine.docker("kill", project.container(leader))
    killed = time.monotonic()

    def write() -> bool:
        """Acknowledged, or found committed by a try whose answer was lost (a write that
        times out across a leader change may still commit: RECIPES)."""
        for verb in ("create", "show"):
            if project.corral(survivors[0], "profile", verb, "after-kill", check=False,
                              timeout=15).returncode == 0:
                return True
        return False

    _until(write, FAILOVER_BUDGET, f"a write through {survivors[0]} after {leader} was killed")
    print(f"\nleader {leader} killed -> write acknowledged by {survivors[0]} in "
          f"{time.monotonic() - killed:.1f} s")
    profiles = project.corral(survivors[1], "profile", "list", "--format", "json").stdout
    assert "after-kill" in {p["name"] for p in json.loads(profiles)}
    new_leader = _until(lambda: next((m["server_name"] for m in project.members(survivors[1])
                                      or [] if "database-leader" in m["roles"]), None),
                        FAILOVER_BUDGET, "a new leader")
    assert new_leader in survivors
    assert project.state(leader) == "exited"
