"""HA in the state machine: the config keys and what the cluster must offer for them,
replica holders, replication reports under the placement epoch, and failover (the new
member, the raised epoch, the reservations, the record kept when the replica is gone).
Every refusal changes nothing."""

from __future__ import annotations

import itertools
import pickle
from typing import Any

import pytest

from cluster.state import reservations
from cluster.state.apply import apply
from cluster.state.commands import Command
from cluster.state.ha import ha_enabled, settings
from cluster.state.ha_keys import settings_of
from cluster.state.model import State
from corral_shared.resources import ZERO, GiB

IMAGE = "c" * 64
_ids = itertools.count()


def cmd(type_: str, **args: Any) -> Command:
    return Command(id=f"h{next(_ids)}", type=type_, args=args, time=100.0)


def cluster(members: int = 3, witness: bool = False) -> State:
    state = State()
    capacity = {"cpu": 8, "memory": 16 * GiB, "disk": 100 * GiB}
    assert apply(state, cmd("cluster.bootstrap", member={"name": "m1", "capacity": capacity},
                            pool={"name": "default", "driver": "dir"},
                            network={"name": "br0"})).ok
    for number in range(2, members + 1):
        name = f"m{number}"
        apply(state, cmd("join_token.add", name=name, secret_hash=name, expires_at=1e9))
        assert apply(state, cmd("member.join", name=name, secret_hash=name,
                                address=f"{name}:8443", raft_address=f"{name}:8444",
                                capacity=capacity)).ok
    if witness:
        state.members[f"m{members}"].roles.append("witness")
    assert apply(state, cmd("image.add", fingerprint=IMAGE, info={"type": "container"},
                            member="m1")).ok
    return state


def launch(state: State, name: str = "c1", **config: str) -> Any:
    return apply(state, cmd("instance.create", uid=f"u-{name}", name=name, type="container",
                            location="m1", image=IMAGE, profiles=["default"],
                            config=config, start=True))


def ha_running(state: State, name: str = "c1", **config: str) -> None:
    result = launch(state, name, **{"cluster.ha": "restart", **config})
    assert result.ok, result.error
    inst = state.instances[name]
    assert apply(state, cmd("instance.observed", uid=inst.uid, generation=inst.generation,
                            status="Running", error="", created=True)).ok


def controller(state: State) -> int:
    return int(apply(state, cmd("controller.claim", member="m1")).value["epoch"])


def synced(state: State, name: str, member: str, at: float, epoch: int = 0,
           source: str = "m1", snapshot: str = "r1") -> Any:
    return apply(state, cmd("instance.replica_synced", uid=f"u-{name}", member=member,
                            source=source, placement_epoch=epoch, snapshot=snapshot,
                            synced_at=at, bytes=10))


@pytest.mark.parametrize(("config", "error"), [
    ({"cluster.ha": "always"}, "must be one of none, restart"),
    ({"cluster.ha.replicas": "0"}, "whole number, 1 to 16"),
    ({"cluster.ha.replication_interval": "0.5"}, "at least 1"),
    ({"cluster.ha.max_lag": "-1"}, "at least 0"),
    ({"cluster.ha": "restart", "cluster.ha.replicas": "3"},
     "cluster.ha.replicas=3 needs as many other members that can run a container; "
     "this cluster has 2"),
])
def test_bad_ha_config_is_refused_and_changes_nothing(config: dict[str, str],
                                                      error: str) -> None:
    state = cluster()
    before = pickle.dumps(state.instances)
    result = launch(state, **config)
    assert not result.ok and error in result.error
    assert pickle.dumps(state.instances) == before


def test_an_ha_vm_is_replicated_to_members_that_run_vms() -> None:
    state = cluster()
    vm_image = "d" * 64
    assert apply(state, cmd("image.add", fingerprint=vm_image,
                            info={"type": "virtual-machine"}, member="m1")).ok
    for name, types in (("m1", ["container", "virtual-machine"]),
                        ("m2", ["container", "virtual-machine"]), ("m3", ["container"])):
        state.members[name].instance_types = types

    def vm(name: str, **config: str) -> Any:
        return apply(state, cmd("instance.create", uid=f"u-{name}", name=name,
                                type="virtual-machine", location="m1", image=vm_image,
                                profiles=["default"], config=config, start=True))

    before = pickle.dumps(state.instances)
    refused = vm("v1", **{"cluster.ha": "restart", "cluster.ha.replicas": "2"})
    assert not refused.ok and ("cluster.ha.replicas=2 needs as many other members that can "
                               "run a virtual-machine; this cluster has 1") in refused.error
    assert pickle.dumps(state.instances) == before
    result = vm("v2", **{"cluster.ha": "restart"})
    assert result.ok, result.error
    assert ha_enabled(state, state.instances["v2"])
    epoch = controller(state)
    wrong = apply(state, cmd("instance.ha_replicas", uid="u-v2", members=["m3"], epoch=epoch))
    assert not wrong.ok and "cannot hold a replica of a virtual-machine" in wrong.error
    assert apply(state, cmd("instance.ha_replicas", uid="u-v2", members=["m2"],
                            epoch=epoch)).ok


def test_a_witness_is_not_counted_as_a_replica_holder() -> None:
    state = cluster(3, witness=True)
    result = launch(state, **{"cluster.ha": "restart", "cluster.ha.replicas": "2"})
    assert not result.ok and "this cluster has 1" in result.error
    assert launch(state, **{"cluster.ha": "restart"}).ok


def test_a_profile_change_that_asks_too_many_replicas_is_refused() -> None:
    state = cluster()
    ha_running(state)
    profile = state.profiles["default"]
    result = apply(state, cmd("profile.update", name="default",
                              config={**profile.config, "cluster.ha.replicas": "5"},
                              devices=profile.devices))
    assert not result.ok and "instance c1: cluster.ha.replicas=5" in result.error
    assert "cluster.ha.replicas" not in state.profiles["default"].config


def test_ha_comes_from_profiles_and_the_instance_wins() -> None:
    state = cluster()
    assert apply(state, cmd("profile.create", name="ha", config={"cluster.ha": "restart",
                                                                  "cluster.ha.max_lag": "30"})).ok
    assert apply(state, cmd("instance.create", uid="u-a", name="a", type="container",
                            location="m1", image=IMAGE, profiles=["default", "ha"])).ok
    assert apply(state, cmd("instance.create", uid="u-b", name="b", type="container",
                            location="m1", image=IMAGE, profiles=["default", "ha"],
                            config={"cluster.ha": "none"})).ok
    assert ha_enabled(state, state.instances["a"])
    assert settings(state, state.instances["a"]).max_lag == 30
    assert not ha_enabled(state, state.instances["b"])


def test_settings_defaults() -> None:
    found = settings_of({"cluster.ha": "restart"})
    assert (found.enabled, found.replicas, found.interval, found.max_lag) == (True, 1, 5.0, None)


def test_replica_holders_are_other_members_that_can_run_it() -> None:
    state = cluster()
    ha_running(state)
    epoch = controller(state)
    for members, error in ((["m1"], "cannot hold its replica"), (["m9"], "not found"),
                           (["m2", "m2"], "one replica at most")):
        result = apply(state, cmd("instance.ha_replicas", uid="u-c1", members=members,
                                  epoch=epoch))
        assert not result.ok and error in result.error
    assert state.instances["c1"].replicas is None
    assert apply(state, cmd("instance.ha_replicas", uid="u-c1", members=["m2"], epoch=epoch)).ok
    assert list(state.instances["c1"].replicas or {}) == ["m2"]
    stale = apply(state, cmd("instance.ha_replicas", uid="u-c1", members=["m3"],
                             epoch=epoch - 1))
    assert not stale.ok and "Stale controller epoch" in stale.error


def test_replication_reports_only_from_the_current_source_and_epoch() -> None:
    state = cluster()
    ha_running(state)
    epoch = controller(state)
    apply(state, cmd("instance.ha_replicas", uid="u-c1", members=["m2"], epoch=epoch))
    assert not synced(state, "c1", "m3", 50.0).ok  # not a holder
    assert not synced(state, "c1", "m2", 50.0, source="m3").ok  # not its member
    assert not synced(state, "c1", "m2", 50.0, epoch=1).ok  # another epoch
    assert synced(state, "c1", "m2", 50.0, snapshot="r50").ok
    assert synced(state, "c1", "m2", 40.0, snapshot="r40").ok  # late, older: ignored
    replica = (state.instances["c1"].replicas or {})["m2"]
    assert (replica.snapshot, replica.synced_at, replica.epoch) == ("r50", 50.0, 0)


def failed_over(state: State) -> Any:
    epoch = controller(state)
    return apply(state, cmd("instance.failover", uid="u-c1", name="c1", target="m2",
                            placement_epoch=0, epoch=epoch, lag=50.0))


def test_failover_moves_the_instance_under_a_new_epoch() -> None:
    state = cluster()
    ha_running(state)
    apply(state, cmd("instance.ha_replicas", uid="u-c1", members=["m2", "m3"],
                     epoch=controller(state)))
    synced(state, "c1", "m2", 50.0, snapshot="r50")
    demand = state.instances["c1"].demand
    result = failed_over(state)
    assert result.ok, result.error
    inst = state.instances["c1"]
    assert (inst.location, inst.epoch, inst.from_replica, inst.power) == ("m2", 1, "r50",
                                                                          "Running")
    assert not inst.observed.created and list(inst.replicas or {}) == ["m3"]
    assert inst.failover is not None and inst.failover["from"] == "m1"
    assert inst.failover["lag"] == 50.0
    assert reservations.reserved(state, "m2") == demand
    assert reservations.reserved(state, "m1") == ZERO
    # the old member's late report, and a second failover under the old epoch: refused
    assert not synced(state, "c1", "m3", 60.0, epoch=0).ok
    assert not failed_over(state).ok
    # the new member creates it from the replica: the replica is no longer news
    assert apply(state, cmd("instance.observed", uid="u-c1", generation=inst.generation,
                            status="Running", error="", created=True)).ok
    assert inst.observed.created and inst.from_replica == ""


def test_failover_needs_a_complete_replica_on_the_target() -> None:
    state = cluster()
    ha_running(state)
    apply(state, cmd("instance.ha_replicas", uid="u-c1", members=["m2"],
                     epoch=controller(state)))
    before = pickle.dumps(state.instances)
    result = failed_over(state)
    assert not result.ok and "holds no complete replica" in result.error
    assert pickle.dumps(state.instances) == before


def test_a_failed_create_from_a_replica_keeps_the_record() -> None:
    state = cluster()
    ha_running(state)
    apply(state, cmd("instance.ha_replicas", uid="u-c1", members=["m2"],
                     epoch=controller(state)))
    synced(state, "c1", "m2", 50.0)
    assert failed_over(state).ok
    inst = state.instances["c1"]
    assert apply(state, cmd("instance.observed", uid="u-c1", generation=inst.generation,
                            status="Stopped", error="replica gone", created=False)).ok
    assert state.instances["c1"] is inst and inst.observed.error == "replica gone"


def test_waiting_is_shown_and_cleared() -> None:
    state = cluster()
    ha_running(state)
    epoch = controller(state)
    assert apply(state, cmd("instance.ha_waiting", uid="u-c1", reason="no member fits",
                            epoch=epoch)).ok
    assert state.instances["c1"].ha_waiting == "no member fits"
    assert apply(state, cmd("instance.ha_waiting", uid="u-c1", reason="", epoch=epoch)).ok
    assert state.instances["c1"].ha_waiting == ""


def test_records_pickle_and_old_ones_load() -> None:
    state = cluster()
    ha_running(state)
    apply(state, cmd("instance.ha_replicas", uid="u-c1", members=["m2"],
                     epoch=controller(state)))
    synced(state, "c1", "m2", 50.0)
    loaded = pickle.loads(pickle.dumps(state))
    assert (loaded.instances["c1"].replicas or {})["m2"].synced_at == 50.0
