"""The HA chaos checker on hand-made and generated runs (no cluster involved).

Each check passes a good run and fails the same run with one thing broken: a sample
with an instance on two hosts, a failover that lost too much (or went ahead of its
old copy), a returned host running an instance that left it. The generated runs come
from ``simulate``: hosts fail one after another, their instances vanish for a while and
come back on another host, and the failed host returns; correct by construction.
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass, replace
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.chaos.ha_checker import (
    COUNTER,
    DOUBLE,
    RETURNING,
    SLACK_TICKS,
    Failover,
    Return,
    Sample,
    check,
)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HOSTS = ("m1", "m2", "m3")


def _timeline(instance: str, *stints: tuple[float, float, str | None]) -> list[Sample]:
    """Samples every 0.1 s: ``(start, end, host)`` stints (host None: runs nowhere)."""
    samples = []
    for start, end, host in stints:
        for i in range(round((end - start) / 0.1)):
            samples.append(Sample(round(start + i * 0.1, 3), instance,
                                  () if host is None else (host,)))
    return samples


def _merge(samples: list[Sample]) -> list[Sample]:
    """One sample per instance and time, with every host any of them saw."""
    merged: dict[tuple[float, str], set[str]] = {}
    for s in samples:
        merged.setdefault((s.t, s.instance), set()).update(s.hosts)
    return [Sample(t, i, tuple(sorted(h))) for (t, i), h in sorted(merged.items())]


def _good() -> tuple[list[Sample], list[Failover], list[Return]]:
    """c1 runs on m1, which dies at t=10; it runs on m2 from t=15; m1 is back at t=20.
    c2 stays on m3 throughout."""
    samples = (_timeline("c1", (0, 10, "m1"), (10, 15, None), (15, 40, "m2"))
               + _timeline("c2", (0, 40, "m3")))
    failovers = [Failover("c1", "m1", last_written=100, resumed_from=60, interval=5.0,
                          detection=0.1)]
    returns = [Return("m1", ("c1",), back_at=20.0, until=40.0)]
    return samples, failovers, returns


def test_a_good_run_passes_with_its_summary() -> None:
    report = check(*_good())
    assert report.ok, report.violations
    assert (report.samples, report.double_running, report.failovers, report.max_loss) == (
        800, 0, 1, 40)
    assert report.line(faults=1) == (
        "ha chaos: 1 faults injected, 1 failovers, max counter loss 40 ticks, "
        "0 double-running samples of 800, 0 instances started by a returning host, "
        "0 violations")


def test_an_instance_on_two_hosts_in_one_sample_fails() -> None:
    samples, failovers, returns = _good()
    samples[5] = replace(samples[5], hosts=("m1", "m2"))
    report = check(samples, failovers, returns)
    assert report.double_running == 1
    assert [v.check for v in report.violations] == [DOUBLE]
    assert "c1 ran on m1, m2 at once from t=0.50 to t=0.50 (1 samples)" in (
        report.violations[0].detail)


def test_a_double_running_episode_is_one_violation_with_its_samples_counted() -> None:
    samples, failovers, returns = _good()
    samples = _merge(samples + _timeline("c2", (12, 13, "m1")))  # also m1 for 10 samples
    report = check(samples, failovers, returns)
    assert report.double_running == 10
    assert [v.check for v in report.violations] == [DOUBLE]
    assert "(10 samples)" in report.violations[0].detail


def test_a_loss_beyond_interval_plus_detection_fails() -> None:
    samples, failovers, returns = _good()
    bound = failovers[0].bound()
    assert bound == 51 + SLACK_TICKS
    at_bound = [replace(failovers[0], resumed_from=100 - bound)]
    assert check(samples, at_bound, returns).ok
    beyond = [replace(failovers[0], resumed_from=100 - bound - 1)]
    report = check(samples, beyond, returns)
    assert [v.check for v in report.violations] == [COUNTER]
    assert f"lost {bound + 1} ticks" in report.violations[0].detail
    assert report.max_loss == bound + 1


def test_a_longer_detection_allows_more_loss() -> None:
    samples, failovers, returns = _good()
    slow = [replace(failovers[0], resumed_from=20, detection=3.5)]  # 80 ticks lost
    assert check(samples, slow, returns).ok
    assert not check(samples, [replace(slow[0], detection=0.5)], returns).ok


def test_a_new_copy_ahead_of_the_old_one_fails() -> None:
    samples, failovers, returns = _good()
    report = check(samples, [replace(failovers[0], resumed_from=101)], returns)
    assert [v.check for v in report.violations] == [COUNTER]
    assert "diverged" in report.violations[0].detail


def test_a_failover_whose_counters_were_not_read_fails() -> None:
    samples, failovers, returns = _good()
    no_failover = check(samples, [replace(failovers[0], resumed_from=None)], returns)
    assert "no failover" in no_failover.violations[0].detail
    assert no_failover.failovers == 0 and no_failover.max_loss is None
    unread = check(samples, [replace(failovers[0], last_written=None)], returns)
    assert [v.check for v in unread.violations] == [COUNTER]


def test_a_returned_host_running_an_instance_that_left_it_fails() -> None:
    samples, failovers, returns = _good()
    samples = _merge(samples + _timeline("c1", (25, 26, "m1")))  # on m2 too: double
    report = check(samples, failovers, returns)
    assert {v.check for v in report.violations} == {RETURNING, DOUBLE}
    returning = [v for v in report.violations if v.check == RETURNING]
    assert len(returning) == 1
    assert "m1 came back at t=20.00 and ran c1" in returning[0].detail
    assert "(10 samples)" in returning[0].detail


def test_a_returned_host_judged_only_within_its_window() -> None:
    """Before it came back (the old copy, until fenced) and after the window (a later
    failover may bring the instance back) the host may run it."""
    samples = (_timeline("c1", (0, 12, "m1"), (12, 15, None), (15, 30, "m2"),
                         (30, 33, None), (33, 40, "m1")))
    returns = [Return("m1", ("c1",), back_at=20.0, until=30.0)]
    assert check(samples, [], returns).ok
    late = [replace(r, until=35.0) for r in returns]
    assert [v.check for v in check(samples, [], late).violations] == [RETURNING]


def test_the_checker_imports_nothing_of_the_product() -> None:
    source = Path(__file__).parents[1] / "chaos" / "ha_checker.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"cluster", "node_agent", "scheduler", "devtools", "tests"}, imported


# --- generated runs --------------------------------------------------------------------

@dataclass
class Run:
    samples: list[Sample]
    failovers: list[Failover]
    returns: list[Return]


def simulate(seed: int, instances: int, faults: int) -> Run:
    """A correct run: every 20 s a host that runs an instance fails; its instances run
    nowhere for 1-6 s, then each on another host with a loss within its bound; the host
    comes back 8 s after the fault and runs none of them until the next fault."""
    rng = random.Random(seed)
    where = {f"c{i}": HOSTS[i % len(HOSTS)] for i in range(instances)}
    samples: list[Sample] = []
    failovers: list[Failover] = []
    returns: list[Return] = []
    t = 0.0
    for k in range(faults + 1):
        end = 20.0 * (k + 1)
        if k == faults:
            gone, back = "", {}
        else:
            gone = rng.choice(sorted(set(where.values())))
            back = {name: t + 10 + rng.uniform(1.0, 6.0)
                    for name, host in where.items() if host == gone}
        while t < end - 1e-9:
            for name, host in sorted(where.items()):
                running = () if name in back and t >= 10 + 20.0 * k else (host,)
                if name in back and t >= back[name]:
                    running = (min(h for h in HOSTS if h != gone),)
                samples.append(Sample(round(t, 3), name, running))
            t = round(t + 0.1, 3)
        for name in sorted(back):
            interval, detection = rng.choice([1.0, 5.0]), rng.uniform(0.0, 4.0)
            f = Failover(name, gone, 1000, None, interval, detection)
            failovers.append(replace(f, resumed_from=1000 - rng.randint(0, f.bound())))
            where[name] = min(h for h in HOSTS if h != gone)
        if gone:
            returns.append(Return(gone, tuple(sorted(back)), 20.0 * k + 18.0,
                                  20.0 * (k + 1) + 10.0))
    return Run(samples, failovers, returns)


runs = st.builds(simulate, st.integers(0, 2**32), st.integers(1, 4), st.integers(1, 3))


@SETTINGS
@given(runs)
def test_every_correct_run_passes(run: Run) -> None:
    report = check(run.samples, run.failovers, run.returns)
    assert report.ok, report.violations
    assert report.failovers == len(run.failovers)


@SETTINGS
@given(runs, st.integers(0, 2**32), st.sampled_from([DOUBLE, COUNTER, RETURNING]))
def test_every_run_broken_once_fails_that_check(run: Run, seed: int, broken: str) -> None:
    rng = random.Random(seed)
    if broken == DOUBLE:
        i = rng.randrange(len(run.samples))
        run.samples[i] = replace(run.samples[i], hosts=HOSTS[:2])
    elif broken == COUNTER:
        i = rng.randrange(len(run.failovers))
        f = run.failovers[i]
        assert f.last_written is not None
        run.failovers[i] = replace(f, resumed_from=f.last_written - f.bound()
                                   - rng.randint(1, 100))
    else:
        r = rng.choice(run.returns)
        name = rng.choice(r.left)
        t = round(rng.uniform(r.back_at, r.until), 1)
        run.samples.append(Sample(t, name, (r.host,)))
    report = check(run.samples, run.failovers, run.returns)
    assert broken in {v.check for v in report.violations}
    assert (report.double_running > 0) == (broken == DOUBLE)
