"""A real Prometheus scrapes a real 3-member cluster (namespaces) that runs containers and
a VM, through a ``metrics`` certificate, member by member and through one member's
``scope=cluster``; a member killed mid-way shows in ``corral_member_scrape_success`` and
does not fail the cluster scrape.
"""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import pytest

from corral_shared import tls
from devtools.harness import DaemonProcess
from devtools.prometheus import Prometheus, ScrapeJob, TlsFiles, sample_value
from tests.cluster.conftest import namespace_cluster
from tests.cluster.test_nemesis import _dev, _leader
from tests.integration.api import Api

pytestmark = pytest.mark.real


def _addresses(member: DaemonProcess) -> dict[str, str]:
    found = Api(str(member.socket)).get("/1.0/cluster/members?recursion=1")
    return {m["server_name"]: m["url"].removeprefix("https://") for m in found}


def _cluster_scrape(address: str, cert: tuple[Path, Path], ca: Path) -> tuple[int, str]:
    host, _, port = address.rpartition(":")
    context = tls.client_context(*cert)
    context.load_verify_locations(cafile=str(ca))
    context.check_hostname = False
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
    try:
        conn.request("GET", "/1.0/metrics?scope=cluster")
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.mark.timeout(900)
def test_prometheus_scrapes_every_member_and_the_cluster_scope(tmp_path: Path) -> None:
    with namespace_cluster(3) as started:
        members = {m.root.name: m for m in started}
        cli = members["m1"]
        cli.corral("image", "build", "busybox", timeout=300)
        cli.corral("image", "build", "busybox", "--vm", timeout=300)
        running = []
        for name in sorted(members):
            instance = f"c-{name}"
            cli.corral("launch", "busybox", instance, "--target", name, timeout=180)
            running.append(instance)
        cli.corral("launch", "busybox-vm", "vm1", "--vm", "--target", "m2",
                   "-c", "limits.memory=256MiB", "-d", "root,size=1GiB", timeout=300)
        running.append("vm1")

        crt, key = tmp_path / "metrics.crt", tmp_path / "metrics.key"
        tls.ensure_pair(crt, key, "prometheus", [])
        cli.corral("config", "trust", "add", str(crt), "--type", "metrics")
        addresses = _addresses(cli)
        files = TlsFiles(crt, key, ca_file=cli.root / "server.crt", server_name="localhost")
        jobs = [ScrapeJob("corral", sorted(addresses.values()), tls=files),
                ScrapeJob("corral-cluster", [addresses["m3"]], params={"scope": ["cluster"]},
                          tls=files, honor_labels=True)]
        with Prometheus(jobs) as prom:
            up = prom.wait_for('up == 1', 120, lambda r: len(r) == 4)
            assert {s["metric"]["job"] for s in up} == {"corral", "corral-cluster"}
            for instance in running:  # series for each running instance, both ways
                for job in ("corral", "corral-cluster"):
                    prom.wait_for(f'lxd_memory_MemTotal_bytes{{job="{job}",'
                                  f'name="{instance}"}}', 180)
            vm = prom.wait_for('lxd_cpu_seconds_total{name="vm1",job="corral"}', 60)
            assert {s["metric"]["type"] for s in vm} == {"virtual-machine"}
            leader = _leader(cli)
            assert leader is not None
            leaders = prom.wait_for('corral_raft_leader{job="corral"} == 1', 30)
            assert len(leaders) == 1
            assert leaders[0]["metric"]["instance"] == addresses[leader]
            by_member = prom.wait_for('corral_raft_leader{job="corral-cluster"} == 1', 30)
            assert [s["metric"]["member"] for s in by_member] == [leader]
            success = prom.wait_for('corral_member_scrape_success == 1', 30,
                                    lambda r: len(r) == 3)
            assert {s["metric"]["member"] for s in success} == set(members)
            online = prom.wait_for('corral_members{job="corral",status="ONLINE"}', 30,
                                   lambda r: len(r) == 3)
            assert {sample_value(s) for s in online} == {3.0}

            # A member dies: the cluster scrape still answers, at once, and says so.
            victim = "m2" if leader != "m2" else "m1"
            _dev(cli, "kill", victim)
            asker = next(n for n in members if n not in (victim,))
            started_at = time.monotonic()
            status, text = _cluster_scrape(addresses[asker], (crt, key),
                                           cli.root / "server.crt")
            took = time.monotonic() - started_at
            assert status == 200, text
            assert f'corral_member_scrape_success{{member="{victim}"}} 0.0' in text
            assert took < 10, took
            prom.wait_for(f'corral_member_scrape_success{{member="{victim}"}} == 0', 60)
            prom.wait_for(f'up{{job="corral",instance="{addresses[victim]}"}} == 0', 60)
