"""A real 3-member cluster: daemons in their own network namespaces, formed by joining."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devtools import devcluster
from devtools.harness import DaemonProcess
from tests.integration.conftest import real_prerequisites


@contextmanager
def namespace_cluster(nodes: int, witness: bool = False,
                      storage_backend: str = "dir") -> Iterator[list[DaemonProcess]]:
    """A formed cluster of ``nodes`` members (with ``witness`` the last one joins as a
    witness); their logs are kept in /tmp/corral-cluster-logs."""
    problem = real_prerequisites()
    if problem:
        pytest.skip(problem)
    directory = Path("/tmp") / f"corral-cluster-{secrets.token_hex(3)}"
    try:
        yield devcluster.up(nodes, directory, witness=witness,
                            storage_backend=storage_backend)
    finally:
        keep = Path("/tmp/corral-cluster-logs")
        keep.mkdir(exist_ok=True)
        for log in [*directory.glob("m*/*.log"), *directory.glob("m*/daemon.stderr")]:
            shutil.copy(log, keep / f"{directory.name}-{log.parent.name}-{log.name}")
        devcluster.down(directory)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def members() -> Iterator[list[DaemonProcess]]:
    with namespace_cluster(3) as started:
        started[0].corral("image", "build", "busybox", timeout=300)
        yield started
