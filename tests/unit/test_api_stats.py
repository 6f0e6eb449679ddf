"""LXD's request counters: entity types and results (cluster/api/metrics/api_stats.py)."""

from __future__ import annotations

import pytest

from cluster.api.metrics.api_stats import entity_type, result_of


@pytest.mark.parametrize(("path", "entity"), [
    ("/1.0", "server"), ("/", "server"), ("/not/an/endpoint", "server"),
    ("/1.0/instances", "instance"), ("/1.0/instances/c1/state", "instance"),
    ("/1.0/containers/c1", "instance"), ("/1.0/images/abc", "image"),
    ("/1.0/storage-pools/default", "storage_pool"), ("/1.0/networks/br0", "network"),
    ("/1.0/operations/x/wait", "operation"), ("/1.0/cluster", "cluster"),
    ("/1.0/cluster/members/m1", "cluster_member"), ("/1.0/certificates", "certificate"),
    ("/1.0/profiles/default", "profile"), ("/1.0/metrics", "server"),
])
def test_entity_types_are_lxds(path: str, entity: str) -> None:
    assert entity_type(path) == entity


def test_results_by_status() -> None:
    assert [result_of(s) for s in (200, 201, 202, 400, 403, 404, 500, 503)] == [
        "succeeded", "succeeded", "succeeded", "error_client", "error_client", "error_client",
        "error_server", "error_server"]
