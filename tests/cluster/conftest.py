"""A real 3-member cluster: daemons in their own network namespaces, formed by joining."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import devcluster
from cluster.harness import DaemonProcess
from tests.integration.conftest import real_prerequisites


@pytest.fixture(scope="module")
def members() -> Iterator[list[DaemonProcess]]:
    problem = real_prerequisites()
    if problem:
        pytest.skip(problem)
    directory = Path("/tmp") / f"corral-cluster-{secrets.token_hex(3)}"
    try:
        started = devcluster.up(3, directory)
        started[0].corral("image", "build", "busybox", timeout=300)
        yield started
    finally:
        keep = Path("/tmp/corral-cluster-logs")
        keep.mkdir(exist_ok=True)
        for log in directory.glob("m*/*.log"):
            shutil.copy(log, keep / f"{directory.name}-{log.parent.name}-{log.name}")
        for log in directory.glob("m*/daemon.stderr"):
            shutil.copy(log, keep / f"{directory.name}-{log.parent.name}-daemon.stderr")
        devcluster.down(directory)
        shutil.rmtree(directory, ignore_errors=True)
