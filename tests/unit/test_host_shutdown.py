"""``node_agent.host_shutdown``: the SIGPWR stop of every instance here (in parallel,
each within its own window, all within a total), and its marks, which make the agent
start those instances again after a daemon restart on the same boot instead of taking
them for instances that powered off by themselves. The host is a fake at the driver
boundary (real containers: tests/integration/test_systemd_daemon.py)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.state.apply import apply
from node_agent import agent as agent_module
from node_agent.agent import NodeAgent
from node_agent.host_shutdown import (
    DEFAULT_TIMEOUT,
    MARKS_FILE,
    Marks,
    Target,
    clean_window,
    own_timeout,
    read_marks,
    shut_down,
    stop_all,
)
from tests.unit.test_agent_converge import FakeHost, MemoryStore, run, settle
from tests.unit.test_apply import bootstrapped, cmd, create


class StoppingHost(FakeHost):
    """A fake host whose driver's clean stop takes ``stop_seconds``, and records the
    window each stop was given; names in ``refuse`` fail to stop."""

    def __init__(self, stop_seconds: float = 0.0) -> None:
        super().__init__()
        self.stop_seconds = stop_seconds
        self.windows: dict[str, float] = {}
        self.refuse_stop: set[str] = set()
        self._lock = threading.Lock()

    def driver_for(self, instance_type: str) -> Any:
        return SimpleNamespace(stop=self._stop)

    def _stop(self, name: str, force: bool, timeout: float) -> None:
        assert not force  # a clean stop; the driver kills once the window ends
        time.sleep(self.stop_seconds)
        if name in self.refuse_stop:
            raise RuntimeError(f"{name} did not stop")
        with self._lock:
            self.windows[name] = timeout
            self.statuses[name] = "Stopped"


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> StoppingHost:
    fake = StoppingHost()
    monkeypatch.setattr(agent_module, "perform", fake.perform)
    return fake


def targets(*names: str, timeout: float = DEFAULT_TIMEOUT) -> list[Target]:
    return [Target(f"u-{n}", n, "container", timeout) for n in names]


def test_the_instance_key_sets_its_window_and_an_unset_one_is_lxds_default() -> None:
    assert own_timeout({"boot.host_shutdown_timeout": "5"}) == 5.0
    assert own_timeout({}) == DEFAULT_TIMEOUT == 30.0


@given(st.floats(0, 1e6), st.floats(-1e6, 1e6))
def test_a_window_never_exceeds_its_own_timeout_nor_what_is_left(own: float,
                                                                   left: float) -> None:
    window = clean_window(own, left)
    assert 0.0 <= window <= own
    assert window <= max(left, 0.0)


def test_stops_run_in_parallel_within_the_total() -> None:
    host = StoppingHost(stop_seconds=0.4)
    for name in ("a", "b", "c", "d"):
        host.statuses[name] = "Running"
    began = time.monotonic()
    done = stop_all(host, targets("a", "b", "c", "d"), total=10.0)  # type: ignore[arg-type]
    assert time.monotonic() - began < 1.2  # not 4 x 0.4 s one after the other
    assert [o.name for o in done] == ["a", "b", "c", "d"] and not any(o.error for o in done)
    assert all(host.status(n) == "Stopped" for n in "abcd")
    assert all(9.0 < w <= 10.0 for w in host.windows.values())  # own 30 s, capped at 10


def test_a_spent_total_kills_at_once_and_a_failure_stops_no_other() -> None:
    host = StoppingHost()
    host.statuses.update(a="Running", b="Frozen", c="Running")
    host.refuse_stop.add("b")
    done = stop_all(host, targets("a", "b", "c"), total=0.0)  # type: ignore[arg-type]
    assert {o.name: o.error for o in done} == {"a": "", "b": "b did not stop", "c": ""}
    assert host.windows == {"a": 0.0, "c": 0.0}


def test_only_running_instances_are_marked_and_stopped(tmp_path: Path) -> None:
    host = StoppingHost()
    host.statuses.update(up="Running", cold="Frozen")
    marks = Marks(tmp_path)
    done = shut_down(host, marks, targets("up", "cold", "off"), total=5.0)  # type: ignore[arg-type]
    assert sorted(o.name for o in done) == ["cold", "up"]
    assert read_marks(tmp_path / MARKS_FILE) == {"u-up", "u-cold"}
    assert "u-up" in Marks(tmp_path) and "u-off" not in Marks(tmp_path)  # read back


def test_marks_are_dropped_one_by_one_and_the_file_goes_with_the_last(tmp_path: Path) -> None:
    marks = Marks(tmp_path)
    marks.add(["u1", "u2"])
    marks.drop("u1")
    assert read_marks(tmp_path / MARKS_FILE) == {"u2"}
    marks.drop("u2")
    assert not (tmp_path / MARKS_FILE).exists() and len(marks) == 0


@pytest.mark.parametrize("text", ["{torn", json.dumps({"uids": [1]}), json.dumps([])])
def test_an_unreadable_marks_file_reads_as_none(tmp_path: Path, text: str) -> None:
    (tmp_path / MARKS_FILE).write_text(text)
    assert len(Marks(tmp_path)) == 0


def _converged_running(state: Any, host: StoppingHost) -> None:
    create(state, "c1", start=True)
    apply(state, cmd("instance.observed", uid="u-c1", generation=2, status="Running",
                     host="m1/b"))
    host.statuses["c1"] = "Running"
    host.volumes.add("c1")


@pytest.mark.parametrize(("stopped_meanwhile", "expected"),
                         [(False, "Running"), (True, "Stopped")])
def test_a_daemon_restarted_on_the_same_boot_starts_what_the_shutdown_stopped(
        host: StoppingHost, tmp_path: Path, stopped_meanwhile: bool, expected: str) -> None:
    """SIGPWR without a reboot (the boot id is the same): the stop changes no desired
    state and reports nothing; the next agent starts the instance again (not "stopped by
    itself", which would make its desired state Stopped), unless a user stopped it
    meanwhile. Either way the mark is gone once converged."""
    async def body() -> None:
        host.paths = SimpleNamespace(root=tmp_path)
        state = bootstrapped()
        _converged_running(state, host)
        store = MemoryStore(state)
        first = NodeAgent("m1", store, host, boot_id="b")  # type: ignore[arg-type]
        done = await first.stop_for_host_shutdown(total=5.0)
        assert [(o.name, o.error) for o in done] == [("c1", "")]
        assert host.status("c1") == "Stopped" and state.instances["c1"].power == "Running"
        assert store.log == []  # nothing reported, nothing changed
        assert read_marks(tmp_path / MARKS_FILE) == {"u-c1"}
        if stopped_meanwhile:
            assert apply(state, cmd("instance.action", name="c1", action="stop")).ok
        second = NodeAgent("m1", store, host, boot_id="b")  # type: ignore[arg-type]
        await second.start()
        await settle(second)
        await second.close()
        assert (host.status("c1"), state.instances["c1"].power) == (expected, expected)
        assert ("c1", "start") in host.done or stopped_meanwhile
        assert not (tmp_path / MARKS_FILE).exists()
    run(body)
