"""Placement through the API on one member: concurrent launches never overcommit it."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from devtools.harness import DaemonProcess
from tests.integration.api import Api

pytestmark = pytest.mark.real


def test_concurrent_launches_fill_a_member_exactly_and_no_further(
        fresh_daemon: DaemonProcess) -> None:
    api = Api(str(fresh_daemon.socket))
    member = api.get("/1.0/cluster/members?recursion=1")[0]["server_name"]
    api.ok("PATCH", f"/1.0/cluster/members/{member}",
           {"config": {"scheduler.capacity.memory": "1GiB"}})

    def launch(index: int) -> tuple[int, dict]:
        return api.call("POST", "/1.0/instances", {
            "name": f"p{index}", "source": {"type": "image", "alias": "busybox"},
            "config": {"limits.memory": "256MiB"}})

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(launch, range(8)))
    accepted = [doc for status, doc in results if status < 400]
    refused = [doc for status, doc in results if status >= 400]
    assert len(accepted) == 4, results  # 4 x 256 MiB = the 1 GiB the member offers
    assert all("free memory" in doc["error"] and "256 MiB" in doc["error"] for doc in refused)
    for status, doc in results:
        if status < 400:
            api.wait(doc["operation"])
    assert len(api.get("/1.0/instances")) == 4
    # Growing one of them past the member's capacity is refused, and changes nothing.
    first = next(f"p{i}" for i, (status, _) in enumerate(results) if status < 400)
    inst = api.get(f"/1.0/instances/{first}")
    status, doc = api.call("PATCH", f"/1.0/instances/{first}",
                           {"config": {"limits.memory": "512MiB"}})
    assert status == 400 and "free" in doc["error"]
    assert api.get(f"/1.0/instances/{first}")["config"] == inst["config"]
    explain = api.call("POST", "/1.0/instances?placement=explain", {
        "name": "more", "source": {"type": "image", "alias": "busybox"},
        "config": {"limits.memory": "256MiB"}})[1]["metadata"]
    assert explain["member"] is None and "free memory" in explain["error"]


def test_cpu_is_overcommitted_by_the_allocation_ratio_as_lxd_users_expect(
        fresh_daemon: DaemonProcess) -> None:
    """Issue 12's scenario: on a 2-CPU member, two limits.cpu=1 containers left no CPU for
    a third 1-CPU reservation ("has 0 CPUs free, needs 1 CPU"). At the default CPU
    allocation ratio (16) it places; at ratio 1 it is refused as before."""
    api = Api(str(fresh_daemon.socket))
    member = api.get("/1.0/cluster/members?recursion=1")[0]["server_name"]
    api.ok("PATCH", f"/1.0/cluster/members/{member}",
           {"config": {"scheduler.capacity.cpu": "2"}})  # as the 2-core demo machine

    def spec(name: str) -> dict:
        return {"name": name, "source": {"type": "image", "alias": "busybox"},
                "config": {"limits.cpu": "1"}}

    for name in ("c1", "c2"):
        api.ok("POST", "/1.0/instances", spec(name))
    # Ratio 1: the old behaviour, refused with the binding constraint.
    api.ok("PATCH", "/1.0", {"config": {"scheduler.cpu_allocation_ratio": "1"}})
    status, doc = api.call("POST", "/1.0/instances", spec("c3"))
    assert status == 400 and "has 0 CPUs free, needs 1 CPU" in doc["error"], doc
    # Bad values: a clear 400 naming the key, and the config unchanged.
    for key, value in (("scheduler.cpu_allocation_ratio", "0"),
                       ("scheduler.cpu_allocation_ratio", "many"),
                       ("scheduler.memory_allocation_ratio", "0.1")):
        status, doc = api.call("PATCH", "/1.0", {"config": {key: value}})
        assert status == 400 and key in doc["error"], doc
    assert api.get("/1.0")["config"]["scheduler.cpu_allocation_ratio"] == "1"
    # Back to the default (unset, as `corral config unset` does): 16.
    fresh_daemon.corral("config", "unset", "scheduler.cpu_allocation_ratio")
    explain = api.call("POST", "/1.0/instances?placement=explain", spec("c3"))[1]["metadata"]
    assert explain["member"] == member and explain["allocation_ratios"]["cpu"] == 16
    assert "allocation ratios cpu 16, memory 1" in explain["text"][0]
    api.ok("POST", "/1.0/instances", spec("c3"))
    cpu = api.get(f"/1.0/cluster/members/{member}")["placement"]["cpu"]
    assert cpu == {"capacity": 2, "allocation_ratio": 16, "schedulable": 32, "used": 3}
    listed = fresh_daemon.corral("cluster", "list", "--format", "csv").stdout.decode()
    assert f"{member}," in listed and ",3/32," in listed, listed
    # The CLI sets it like any cluster key, and the ratio bounds placement again.
    fresh_daemon.corral("config", "set", "scheduler.cpu_allocation_ratio", "1.5")
    status, doc = api.call("POST", "/1.0/instances", spec("c4"))
    assert status == 400 and "scheduler.cpu_allocation_ratio 1.5" in doc["error"], doc
