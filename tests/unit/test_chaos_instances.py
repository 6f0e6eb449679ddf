"""The chaos checker on instance operations (no cluster involved): an acknowledged
create must leave the instance on every member unless an acknowledged delete may have
followed; an acknowledged start or stop must leave its status unless another may have
followed; a 404 to a start, stop or delete is a read of *absent*, so a member that denies
an acknowledged create is reported; repeated starts and stops are not register writes."""

from __future__ import annotations

from tests.chaos.checker import check
from tests.chaos.durability import LossKind
from tests.chaos.history import History, Kind, Outcome, Recorder
from tests.chaos.instances import final_instances

MEMBERS = ("m1", "m2", "m3")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _recorder() -> Recorder:
    return Recorder(clock=Clock())


def _final(**state: object) -> dict[str, dict[str, object]]:
    return {m: dict(state) for m in MEMBERS}


def _lifecycle(rec: Recorder) -> None:
    """i-a created, started, stopped, started again: all acknowledged."""
    rec.ok(rec.invoke("c1", Kind.CREATE, "instance/i-a", value="c1-1"))
    for kind, status in ((Kind.START, "Running"), (Kind.STOP, "Stopped"),
                         (Kind.START, "Running")):
        rec.ok(rec.invoke("c1", kind, "status/i-a", value=status))


def test_an_instance_that_ends_as_its_last_acknowledged_start_left_it_passes() -> None:
    rec = _recorder()
    _lifecycle(rec)
    report = check(rec.history(_final(**{"instance/i-a": "c1-1", "status/i-a": "Running"})))
    assert report.ok, report.details()
    assert report.operations == 4 and report.acknowledged == 4


def test_a_lost_instance_and_a_lost_stop_are_reported() -> None:
    rec = _recorder()
    _lifecycle(rec)
    rec.ok(rec.invoke("c2", Kind.CREATE, "instance/i-b", value="c2-1"))
    final = _final(**{"instance/i-a": "c1-1", "status/i-a": "Stopped"})  # i-b gone
    report = check(rec.history(final))
    kinds = {(loss.kind, loss.op.key) for loss in report.losses}
    assert kinds == {(LossKind.LOST_WRITE, "instance/i-b"),
                     (LossKind.LOST_STATE, "status/i-a")}
    assert len(report.losses) == 2 * len(MEMBERS)


def test_an_unknown_stop_after_the_start_explains_a_stopped_instance() -> None:
    rec = _recorder()
    _lifecycle(rec)
    rec.unknown(rec.invoke("c1", Kind.STOP, "status/i-a", value="Stopped"), "timeout")
    report = check(rec.history(_final(**{"instance/i-a": "c1-1", "status/i-a": "Stopped"})))
    assert report.ok, report.details()


def test_an_acknowledged_delete_must_leave_the_instance_absent() -> None:
    rec = _recorder()
    _lifecycle(rec)
    rec.ok(rec.invoke("c1", Kind.STOP, "status/i-a", value="Stopped"))
    rec.ok(rec.invoke("c1", Kind.DELETE, "instance/i-a"))
    assert check(rec.history(_final())).ok
    resurrected = check(rec.history(_final(**{"instance/i-a": "c1-1",
                                              "status/i-a": "Stopped"})))
    assert [loss.kind for loss in resurrected.losses] == [LossKind.RESURRECTED] * 3


def test_a_404_after_an_acknowledged_create_is_a_stale_read() -> None:
    rec = _recorder()
    rec.ok(rec.invoke("c1", Kind.CREATE, "instance/i-a", value="c1-1"))
    rec.absent(rec.invoke("c2", Kind.START, "status/i-a", value="Running"), "instance/i-a")
    history = rec.history(_final(**{"instance/i-a": "c1-1", "status/i-a": "Stopped"}))
    assert [op.kind for op in history.ops] == [Kind.CREATE, Kind.READ]
    assert history.ops[1].key == "instance/i-a" and history.ops[1].outcome is Outcome.OK
    report = check(history)
    assert [r.key for r in report.non_linearizable] == ["instance/i-a"]


def test_a_404_before_the_create_is_fine() -> None:
    rec = _recorder()
    rec.absent(rec.invoke("c2", Kind.DELETE, "instance/i-a"))
    rec.ok(rec.invoke("c1", Kind.CREATE, "instance/i-a", value="c1-1"))
    assert check(rec.history(_final(**{"instance/i-a": "c1-1",
                                       "status/i-a": "Stopped"}))).ok


def test_final_instances_reads_only_the_suites_instances() -> None:
    listing = [{"name": "i-c1-3", "description": "c1-3", "status": "Running"},
               {"name": "t1", "description": "", "status": "Running"}]
    assert final_instances(listing) == {"instance/i-c1-3": "c1-3",
                                        "status/i-c1-3": "Running"}


def test_histories_with_instances_round_trip_through_json() -> None:
    rec = _recorder()
    _lifecycle(rec)
    history = rec.history(_final(**{"instance/i-a": "c1-1", "status/i-a": "Running"}))
    assert History.from_json(history.to_json()) == history
