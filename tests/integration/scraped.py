"""The shared test daemon scraped by a real Prometheus, as an operator sets it up.

The daemon listens on HTTPS on a free loopback port, trusts a ``metrics`` certificate
(``corral config trust add FILE --type metrics``), and Prometheus pins its ``server.crt``
with ``server_name: localhost`` (deploy/prometheus/README.md). On the way out the
certificate is removed and the daemon's config put back as it was, even after a failure.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from corral_shared import tls
from devtools.harness import DaemonProcess
from devtools.prometheus import Prometheus, ScrapeJob, TlsFiles, free_port
from tests.integration.api import Api


@contextmanager
def https_metrics(daemon: DaemonProcess, directory: Path) -> Iterator[tuple[str, TlsFiles]]:
    """``(host:port, tls)``: the daemon's HTTPS address and the files Prometheus scrapes
    it with."""
    api = Api(str(daemon.socket))
    before = api.get("/1.0")["config"]
    crt, key = directory / "metrics.crt", directory / "metrics.key"
    tls.ensure_pair(crt, key, "prometheus", [])
    fingerprint = tls.fingerprint(tls.pem_to_der(crt.read_text()))
    address = f"127.0.0.1:{free_port()}"
    try:
        api.ok("PATCH", "/1.0", {"config": {"core.https_address": address}})
        daemon.corral("config", "trust", "add", str(crt), "--type", "metrics", "--name",
                      f"prometheus-{secrets.token_hex(2)}")
        yield address, TlsFiles(crt, key, ca_file=daemon.root / "server.crt",
                                server_name="localhost")
    finally:
        daemon.corral("config", "trust", "remove", fingerprint, check=False)
        api.ok("PUT", "/1.0", {"config": before})


@contextmanager
def scraped(daemon: DaemonProcess, directory: Path, jobs: Sequence[tuple[str, bool]],
            interval: float = 1.0) -> Iterator[Prometheus]:
    """A started Prometheus scraping the daemon every ``interval`` seconds, one job per
    ``(name, cluster_scope)``; every job is up when this yields."""
    with https_metrics(daemon, directory) as (address, files):
        scrape_jobs = [ScrapeJob(name, [address], tls=files, honor_labels=cluster,
                                 params={"scope": ["cluster"]} if cluster else {})
                       for name, cluster in jobs]
        with Prometheus(scrape_jobs, interval=interval, parent_dir=directory) as prom:
            prom.wait_for("up == 1", 60, lambda result: len(result) == len(jobs))
            yield prom
