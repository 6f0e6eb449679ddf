"""The Ansible playbook (``ansible/``) deploys corral for real onto hosts that share no file
system, over ssh, and a second run changes nothing.

The hosts (``devtools.sshhosts``): a network namespace each on a bridge of this test, with
their own mount, UTS, PID and cgroup namespaces, an overlay root over the cached Debian
base (``devtools.debian_base``) and sshd as PID 1. The playbook ships the wheels built
from this checkout (``devtools.wheels``), installs them into /opt/corral/venv without an
index, starts the daemons (detached: the hosts have no systemd), and forms the cluster.
The test checks from outside, through each member's unix socket inside its overlay
(``/proc/<its PID 1>/root/var/lib/corral/unix.socket``).

Figures printed: the first deploy of three hosts (not counting the base or the wheels)
and the idempotent second run.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools import wheels
from devtools.debian_base import ensure_base
from devtools.netns import host_routes, namespaces, pick_subnet
from devtools.sshhosts import SshHost, SshHosts
from tests.deploy.ansible_run import REPO, Controller, PlaybookRun, ansible_playbook

pytestmark = pytest.mark.real

# What the hosts' inventory sets beyond the defaults. Only sysctls of the host's own
# network namespace: the defaults' fs.inotify.* and kernel.keys.* are machine-wide, and a
# test host must not change this machine's.
GROUP_VARS: dict[str, Any] = {
    "corral_sysctls": {"net.ipv4.ip_forward": 1},
    "corral_bridge_address": "10.190.72.1/24",
    "corral_max_voters": 3,
}


def _prerequisites() -> str:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("nsenter", "unshare", "pivot_root", "ssh", "ssh-keygen", "debootstrap"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if ansible_playbook() is None:
        return "needs ansible-core in the test venv (pip install -e '.[test]')"
    return ""


@dataclass
class Lab:
    hosts: SshHosts
    controller: Controller
    archive: Path
    certificate: Path

    def inventory(self, names: list[str], **extra: Any) -> dict[str, Any]:
        group = {**GROUP_VARS, "corral_wheels_archive": str(self.archive),
                 "corral_metrics_certificate": str(self.certificate), **extra}
        return self.controller.inventory(
            {n: self.hosts.hosts[n].ip for n in names}, group)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    problem = _prerequisites()
    if problem:
        pytest.skip(problem)
    scratch = Path("/tmp") / f"corral-ansible-{secrets.token_hex(3)}"
    scratch.mkdir(mode=0o700)
    prefix = f"ans{secrets.token_hex(2)}"
    hosts = SshHosts(prefix, pick_subnet(host_routes(), random.Random()), ensure_base(),
                     scratch / "hosts")
    controller = Controller(scratch, hosts.key, hosts.known_hosts)
    try:
        archive = wheels.build(REPO, scratch / "build")
        hosts.create()
        for name in ("h1", "h2", "h3"):
            hosts.add(name)
        yield Lab(hosts, controller, archive, _metrics_certificate(scratch))
    finally:
        controller.close()
        problems = hosts.teardown()
        shutil.rmtree(scratch, ignore_errors=True)
        assert not problems, problems
        assert not [ns for ns in namespaces() if ns.startswith(f"{prefix}-")]
        assert f" {scratch}" not in Path("/proc/self/mountinfo").read_text()


def _metrics_certificate(scratch: Path) -> Path:
    """A self-signed certificate for the metrics trust (as Prometheus would present)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prometheus")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    path = scratch / "prometheus.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def corral(host: SshHost, *args: str, timeout: float = 120.0) -> str:
    """The corral CLI of this checkout, on ``host``'s daemon through its unix socket."""
    env = {**os.environ, "CORRAL_DIR": str(host.path("/var/lib/corral"))}
    proc = subprocess.run([sys.executable, "-m", "corral_cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"corral {' '.join(args)} on {host.name}: {proc.stderr}"
    return proc.stdout


def members(host: SshHost) -> dict[str, dict[str, Any]]:
    listed = json.loads(corral(host, "cluster", "list", "--format", "json"))
    return {m["server_name"]: m for m in listed}


def untouched(host: SshHost) -> bool:
    """Nothing of the playbook's on the host: no /opt/corral, no state directory."""
    return not host.path("/opt/corral").exists() and not host.path("/var/lib/corral").exists()


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[ansible] {text}")


def explain(run: PlaybookRun) -> str:
    return f"rc={run.returncode} after {run.seconds:.1f}s:\n{run.output[-6000:]}"


def test_bad_input_fails_early_and_changes_no_host(lab: Lab) -> None:
    names = ["h1", "h2", "h3"]
    bad = lab.controller.run(lab.inventory(names, corral_storage_backend="zfs",
                                           corral_max_voters=0))
    assert bad.returncode != 0, explain(bad)
    assert "Bad inventory, nothing was changed" in bad.output, explain(bad)
    assert "corral_storage_backend 'zfs' must be one of dir, btrfs" in bad.output
    assert "corral_max_voters 0 must be an integer of at least 1" in bad.output
    assert all(counts["changed"] == 0 for counts in bad.recap.values()), explain(bad)

    # A host that does not answer: the run stops before any host is changed.
    inventory = lab.inventory(names)
    gone = lab.hosts.network.subnet.rsplit(".", 1)[0] + ".250"
    inventory["corral"]["hosts"]["h9"] = {"ansible_host": gone, "corral_address": gone}
    unreachable = lab.controller.run(inventory)
    assert unreachable.returncode != 0, explain(unreachable)
    assert unreachable.recap["h9"]["unreachable"] == 1, explain(unreachable)
    assert "Prepare the hosts" in unreachable.output  # the play started with no host left
    assert "common :" not in unreachable.output, explain(unreachable)
    assert all(c["changed"] == 0 for c in unreachable.recap.values()), explain(unreachable)
    assert all(untouched(lab.hosts.hosts[n]) for n in names)


def test_deploys_a_cluster_idempotently_and_grows_it(lab: Lab,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    names = ["h1", "h2", "h3"]
    h1, h2, h3 = (lab.hosts.hosts[n] for n in names)
    first = lab.controller.run(lab.inventory(names))
    assert first.returncode == 0, explain(first)
    assert all(first.changed()[n] > 0 for n in names), explain(first)
    report(capsys, f"first deploy of 3 hosts: {first.seconds:.1f} s")

    # One cluster, seen alike from every member; three voters.
    for host in (h1, h2, h3):
        seen = members(host)
        assert set(seen) == set(names), seen
        assert all(m["status"] == "Online" for m in seen.values()), seen
        assert all("database" in m["roles"] for m in seen.values()), seen
    # Each host has its own state: the daemons are separate processes on separate roots.
    assert h1.path("/var/lib/corral/cluster.yaml").read_text() != \
        h2.path("/var/lib/corral/cluster.yaml").read_text()
    trusted = json.loads(corral(h2, "config", "trust", "list", "--format", "json"))
    assert [c["type"] for c in trusted if c["name"] == "metrics-client"] == ["metrics"], trusted

    # A container on each member.
    corral(h1, "image", "build", "busybox", timeout=300)
    for host in (h1, h2, h3):
        corral(h1, "launch", "busybox", f"c-{host.name}", "--target", host.name, timeout=300)
    listed = {i["name"]: i for i in json.loads(corral(h3, "list", "--format", "json"))}
    assert {n: (i["status"], i["location"]) for n, i in listed.items()} == {
        f"c-{n}": ("Running", n) for n in names}, listed

    second = lab.controller.run(lab.inventory(names))
    assert second.returncode == 0, explain(second)
    assert second.changed() == {n: 0 for n in names}, explain(second)
    report(capsys, f"second (idempotent) run: {second.seconds:.1f} s, changed=0 on every host")

    # A fourth host in the inventory joins; nothing else changes.
    h4 = lab.hosts.add("h4")
    third = lab.controller.run(lab.inventory([*names, "h4"]))
    assert third.returncode == 0, explain(third)
    changed = third.changed()
    assert {n: changed[n] for n in names} == {n: 0 for n in names}, explain(third)
    assert changed["h4"] > 0, explain(third)
    report(capsys, f"run adding a 4th host: {third.seconds:.1f} s")
    seen = members(h2)
    assert set(seen) == {*names, "h4"}, seen
    assert seen["h4"]["status"] == "Online", seen
    assert "database" not in seen["h4"]["roles"], seen  # cluster.max_voters = 3
    corral(h4, "launch", "busybox", "c-h4", "--target", "h4", timeout=300)
    listed = {i["name"]: i for i in json.loads(corral(h1, "list", "--format", "json"))}
    assert (listed["c-h4"]["status"], listed["c-h4"]["location"]) == ("Running", "h4"), listed

    # New wheels (other bytes): every host reinstalls and restarts its daemon; the
    # cluster and its containers carry on.
    everyone = [*names, "h4"]
    hosts = [lab.hosts.hosts[n] for n in everyone]
    before = {h.name: daemon_pid(h) for h in hosts}
    lab.archive = wheels.build(REPO, lab.archive.parent.parent / "build-next", epoch="1")
    upgrade = lab.controller.run(lab.inventory(everyone))
    assert upgrade.returncode == 0, explain(upgrade)
    assert all(upgrade.changed()[n] > 0 for n in everyone), explain(upgrade)
    report(capsys, f"run installing new wheels on 4 hosts: {upgrade.seconds:.1f} s")
    after = {h.name: daemon_pid(h) for h in hosts}
    assert all(after[n] != before[n] for n in everyone), (before, after)
    assert all_online(h3, everyone)
    listed = {i["name"]: i["status"] for i in json.loads(corral(h4, "list", "--format", "json"))}
    assert listed == {f"c-{n}": "Running" for n in everyone}, listed


def all_online(host: SshHost, names: list[str], timeout: float = 60.0) -> bool:
    """Wait until ``host`` sees exactly ``names``, all Online (daemons that have just
    restarted are judged after the liveness threshold); fails with what it saw."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            seen = {n: m["status"] for n, m in members(host).items()}
        except AssertionError as exc:  # e.g. 503 while the leader changes
            seen = {"error": str(exc)}
        if seen == {n: "Online" for n in names}:
            return True
        assert time.monotonic() < deadline, f"members seen from {host.name}: {seen}"
        time.sleep(1)


def daemon_pid(host: SshHost) -> int:
    """The pid (in the host's PID namespace) of its running daemon, from its pid file."""
    return int(host.path("/var/lib/corral/corral.pid").read_text())
