"""The synchronous QMP client against a fake QMP server on a unix socket."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node_agent.drivers.qemu import qmp

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}},
                    "capabilities": []}}
Handler = Callable[[dict[str, object]], list[dict[str, object]]]


class FakeQmp:
    """Serves QMP connections one at a time, as QEMU does; records the commands seen."""

    def __init__(self, path: Path, handler: Handler, greeting: bool = True,
                 before_greeting: tuple[dict[str, object], ...] = ()) -> None:
        self.path = path
        self.handler = handler
        self.greeting = greeting
        self.before_greeting = before_greeting
        self.seen: list[dict[str, object]] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as stream:
                for message in self.before_greeting:
                    stream.write(json.dumps(message).encode() + b"\r\n")
                if self.greeting:
                    stream.write(json.dumps(GREETING).encode() + b"\r\n")
                    stream.flush()
                for line in stream:
                    request = json.loads(line)
                    self.seen.append(request)
                    replies = ([{"return": {}}] if request["execute"] == "qmp_capabilities"
                               else self.handler(request))
                    for reply in replies:
                        stream.write(json.dumps(reply).encode() + b"\r\n")
                    stream.flush()
                    if not replies:
                        break

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., FakeQmp]]:
    servers: list[FakeQmp] = []

    def start(handler: Handler, greeting: bool = True,
              before_greeting: tuple[dict[str, object], ...] = ()) -> FakeQmp:
        server = FakeQmp(tmp_path / f"qmp{len(servers)}.sock", handler, greeting,
                         before_greeting)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_a_command_returns_its_value_after_capabilities(serve: Callable[..., FakeQmp]) -> None:
    fake = serve(lambda r: [{"return": {"status": "running", "running": True}}])
    assert qmp.execute(fake.path, "query-status") == {"status": "running", "running": True}
    assert [r["execute"] for r in fake.seen] == ["qmp_capabilities", "query-status"]


def test_arguments_are_sent(serve: Callable[..., FakeQmp]) -> None:
    fake = serve(lambda r: [{"return": r.get("arguments")}])
    assert qmp.execute(fake.path, "human-monitor-command",
                       {"command-line": "info version"}) == {"command-line": "info version"}


def test_events_before_the_reply_are_skipped(serve: Callable[..., FakeQmp]) -> None:
    fake = serve(lambda r: [{"event": "POWERDOWN", "timestamp": {}}, {"return": {}}])
    assert qmp.execute(fake.path, "system_powerdown") == {}


def test_an_error_reply_raises_qmp_error(serve: Callable[..., FakeQmp]) -> None:
    fake = serve(lambda r: [{"error": {"class": "CommandNotFound", "desc": "no such"}}])
    with pytest.raises(qmp.QmpError, match="CommandNotFound") as info:
        qmp.execute(fake.path, "bogus")
    assert info.value.klass == "CommandNotFound"


def test_a_connection_closed_before_the_reply_is_unavailable(
        serve: Callable[..., FakeQmp]) -> None:
    fake = serve(lambda r: [])
    with pytest.raises(qmp.QmpUnavailable, match="closed"):
        qmp.execute(fake.path, "quit")


def test_events_before_the_greeting_are_skipped(serve: Callable[..., FakeQmp]) -> None:
    # Seen in CI: QEMU flushed a job's status change, queued around the previous client's
    # disconnect, to the next connection before greeting it.
    event = {"timestamp": {"seconds": 1, "microseconds": 2}, "event": "JOB_STATUS_CHANGE",
             "data": {"status": "waiting", "id": "corral-migration"}}
    fake = serve(lambda r: [{"return": []}], before_greeting=(event, event))
    assert qmp.execute(fake.path, "query-jobs") == []
    stranger = serve(lambda r: [{"return": []}], before_greeting=({"hello": 1},))
    with pytest.raises(qmp.QmpUnavailable, match="no greeting"):
        qmp.execute(stranger.path, "query-jobs")


def test_a_silent_server_times_out(serve: Callable[..., FakeQmp]) -> None:
    fake = serve(lambda r: [], greeting=False)
    with pytest.raises(qmp.QmpUnavailable):
        qmp.execute(fake.path, "query-status", timeout=0.3)


def test_no_socket_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(qmp.QmpUnavailable, match="qmp.sock"):
        qmp.execute(tmp_path / "qmp.sock", "query-status")


def test_threads_share_the_single_client_socket(serve: Callable[..., FakeQmp]) -> None:
    fake = serve(lambda r: [{"return": {"status": "paused"}}])
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(
        qmp.execute(fake.path, "query-status"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [{"status": "paused"}] * 8


def test_a_held_monitor_keeps_events_for_whoever_waits_for_them(
        serve: Callable[..., FakeQmp]) -> None:
    job: dict[str, object] = {"event": "JOB_STATUS_CHANGE",
                              "data": {"id": "mirror", "status": "ready"}}
    active: dict[str, object] = {"event": "MIGRATION", "data": {"status": "active"}}

    def handler(request: dict[str, object]) -> list[dict[str, object]]:
        if request["execute"] == "migrate":
            return [job, {"return": {}}, active]  # one event before the answer, one after
        return [{"return": {"status": "running"}}]

    fake = serve(handler)
    with qmp.Monitor(fake.path) as monitor:
        assert monitor.execute("migrate", {"uri": "tcp:h:1"}) == {}
        assert monitor.take_event(lambda e: e["event"] == "MIGRATION", 2.0) == active
        assert monitor.take_event(lambda e: e["event"] == "JOB_STATUS_CHANGE", 0.1) == job
        assert monitor.take_event(lambda e: True, 0.05) is None  # nothing more came
        assert monitor.execute("query-status") == {"status": "running"}
    assert [r["execute"] for r in fake.seen] == ["qmp_capabilities", "migrate", "query-status"]


def test_a_held_monitor_reports_qemu_errors_and_a_closed_socket(
        serve: Callable[..., FakeQmp]) -> None:
    fake = serve(lambda r: [{"error": {"class": "GenericError", "desc": "no"}}])
    with qmp.Monitor(fake.path) as monitor, pytest.raises(qmp.QmpError, match="no"):
        monitor.execute("migrate-continue")
    fake = serve(lambda r: [])  # answers nothing and hangs up
    with qmp.Monitor(fake.path) as monitor, pytest.raises(qmp.QmpUnavailable):
        monitor.execute("query-migrate")
