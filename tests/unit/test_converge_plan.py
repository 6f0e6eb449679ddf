"""The agent's power plan (node_agent/converge.py): desired + observed + host -> steps."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node_agent.converge import NOTHING, PowerPlan, Seen, Want, plan_power, rebooted

HOST = "m1/boot-b"
POWERS = st.sampled_from(["Running", "Stopped", "Frozen"])
STATUSES = st.sampled_from(["Running", "Stopped", "Frozen"])
HOSTS = st.sampled_from(["", HOST, "m1/boot-a", "m2/boot-b"])


def run(actual: str, steps: tuple[str, ...]) -> tuple[str, bool]:
    """What the host shows after the steps (the drivers' effect, idealised), and whether
    a step failed (freezing a stopped instance: actions._freeze refuses it)."""
    for step in steps:
        if step in ("start", "restart", "unfreeze"):
            actual = "Running"
        elif step == "stop":
            actual = "Stopped"
        elif step == "freeze":
            if actual == "Stopped":
                return actual, True
            actual = "Frozen"
    return actual, False


def after(actual: str, steps: tuple[str, ...]) -> str:
    return run(actual, steps)[0]


@st.composite
def cases(draw: st.DrawFn) -> tuple[Want, Seen, str]:
    seen_gen = draw(st.integers(0, 5))
    seen_boots = draw(st.integers(0, 3))
    want = Want(draw(POWERS), seen_boots + draw(st.integers(0, 2)),
                seen_gen + draw(st.integers(0, 3)), {}, moving=draw(st.booleans()))
    seen = Seen(seen_gen, draw(STATUSES), seen_boots, draw(HOSTS))
    return want, seen, draw(STATUSES)


@given(cases())
def test_one_pass_converges_and_a_second_pass_does_nothing(case: tuple[Want, Seen, str]) -> None:
    """Whatever the starting point, after the planned steps and their report the plan is
    empty: a resync, a restart or a replayed pass does no more work."""
    want, seen, actual = case
    plan = plan_power(want, seen, actual, HOST)
    if plan.self_stopped:
        assert plan.steps == () and actual == "Stopped" and not want.moving
        return
    now, failed = run(actual, plan.steps)
    if failed:  # apply settles the desired state on the observed one (_settle_power)
        want = Want(now, seen.boots, want.generation, {}, want.moving)
    reported = Seen(want.generation, now, seen.boots if failed else want.boots, HOST)
    assert plan_power(want, reported, now, HOST) == NOTHING


@given(cases())
def test_a_change_not_yet_reported_is_carried_out(case: tuple[Want, Seen, str]) -> None:
    want, seen, actual = case
    changed = seen.generation < want.generation or want.boots > seen.boots
    now = after(actual, plan_power(want, seen, actual, HOST).steps)
    if changed and want.power in ("Running", "Stopped"):
        assert now == want.power
    if changed and want.power == "Frozen" and actual != "Stopped":
        assert now == "Frozen"
    if want.boots > seen.boots and want.power == "Running":
        assert plan_power(want, seen, actual, HOST).steps in (("restart",), ("start",))


@given(cases())
def test_a_converged_instance_is_never_fought(case: tuple[Want, Seen, str]) -> None:
    """Once every change is reported, on the same host boot, the plan only ever reports
    a stop the instance made by itself: it never starts, stops or freezes anything."""
    want, seen, actual = case
    seen = Seen(want.generation, seen.status, want.boots, HOST)
    plan = plan_power(want, seen, actual, HOST)
    assert plan.steps == ()
    assert plan.self_stopped == (actual == "Stopped" and want.power != "Stopped"
                                 and not want.moving)


@given(POWERS, STATUSES, st.booleans())
def test_after_a_host_reboot_what_should_run_runs_again(power: str, seen_status: str,
                                                        moving: bool) -> None:
    want = Want(power, 0, 3, {}, moving=moving)
    seen = Seen(3, seen_status, 0, "m1/boot-a")  # reported before the reboot
    plan = plan_power(want, seen, "Stopped", HOST)
    expected = {"Running": ("start",), "Frozen": ("start", "freeze"), "Stopped": ()}[power]
    assert plan == (PowerPlan(expected) if not moving else
                    PowerPlan(()) if power == "Stopped" else NOTHING)
    # a report from before the host token existed, or from another member, is no reboot
    for host in ("", "m2/boot-a"):
        assert not plan_power(want, Seen(3, seen_status, 0, host), "Stopped", HOST).steps


def test_rebooted_needs_the_same_member_and_another_boot() -> None:
    assert rebooted("m1/boot-a", HOST)
    assert not rebooted(HOST, HOST)
    assert not rebooted("m2/boot-a", HOST)
    assert not rebooted("", HOST)


@given(STATUSES, cases())
def test_deleted_and_unknown_statuses_plan_nothing(status: str,
                                                   case: tuple[Want, Seen, str]) -> None:
    want, seen, _ = case
    deleted = Want("Deleted", want.boots, want.generation, {})
    assert plan_power(deleted, seen, status, HOST) == NOTHING
    assert plan_power(want, seen, "Error", HOST) == NOTHING
