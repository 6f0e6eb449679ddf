"""The exec agent's host side against a fake guest agent on a unix socket."""

from __future__ import annotations

import base64
import fcntl
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node_agent.drivers.qemu import agent

Reply = Callable[[list[bytes]], list[bytes]]


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def echo_agent(fields: list[bytes]) -> list[bytes]:
    """Answers HELLO, and EXEC with exit code len(argv), stdout = the decoded args."""
    if fields[0] == b"HELLO":
        return [b"OK " + fields[1] + b" corral-agent 1"]
    if fields[0] == b"EXEC":
        args = [base64.b64decode(f) for f in fields[3:]]
        return [b"RESULT stale 0 . .",  # a leftover from an abandoned call
                b"RESULT " + fields[1] + b" " + str(len(args)).encode() + b" ." +
                b64(b"\0".join(args)) + b" ." + b64(b"limit=" + fields[2])]
    return []


class FakeGuest:
    def __init__(self, vm_dir: Path, reply: Reply) -> None:
        self.reply = reply
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(vm_dir / agent.SOCKET))
        self.server.listen(1)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as stream:
                for line in stream:
                    for answer in self.reply(line.split()):
                        stream.write(answer + b"\n")
                    stream.flush()


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[Callable[[Reply], FakeGuest]]:
    made: list[FakeGuest] = []

    def make(reply: Reply) -> FakeGuest:
        made.append(FakeGuest(tmp_path, reply))
        return made[-1]

    yield make
    for fake in made:
        fake.server.close()


def test_exec_round_trip_skips_stale_results(tmp_path: Path,
                                             guest: Callable[[Reply], FakeGuest]) -> None:
    guest(echo_agent)
    result = agent.exec_in_vm(tmp_path, ["echo", "two words", "ünï\ncode"], timeout=7.5)
    assert result == agent.ExecResult(3, "echo\0two words\0ünï\ncode".encode(), b"limit=8")


def test_no_timeout_is_sent_as_zero(tmp_path: Path,
                                    guest: Callable[[Reply], FakeGuest]) -> None:
    guest(echo_agent)
    assert agent.exec_in_vm(tmp_path, ["true"], timeout=0).stderr == b"limit=0"


def test_an_image_without_agent_fails_clearly_and_fast(
        tmp_path: Path, guest: Callable[[Reply], FakeGuest]) -> None:
    guest(lambda fields: [])
    started = time.monotonic()
    with pytest.raises(agent.AgentUnavailable, match="no answer from a corral agent"):
        agent.exec_in_vm(tmp_path, ["true"], hello_timeout=0.5)
    assert time.monotonic() - started < 2


def test_a_stopped_vm_has_no_agent(tmp_path: Path) -> None:
    with pytest.raises(agent.AgentUnavailable, match="is the VM running"):
        agent.exec_in_vm(tmp_path, ["true"])


def test_malformed_results_raise(tmp_path: Path, guest: Callable[[Reply], FakeGuest]) -> None:
    def broken(fields: list[bytes]) -> list[bytes]:
        if fields[0] == b"HELLO":
            return echo_agent(fields)
        return [b"RESULT " + fields[1] + b" 0 .!!! ."]

    guest(broken)
    with pytest.raises(agent.AgentError, match="malformed"):
        agent.exec_in_vm(tmp_path, ["true"])


def test_requests_need_a_command_without_nul() -> None:
    with pytest.raises(agent.AgentError):
        agent.encode_exec("1", [], 1)
    with pytest.raises(agent.AgentError):
        agent.encode_exec("1", ["a\0b"], 1)
    line = agent.encode_exec("ab", ["ls", "-l"], 2.1)
    assert line == b"EXEC ab 3 " + b64(b"ls") + b" " + b64(b"-l") + b"\n"


def test_the_command_line_entry_passes_output_and_exit_code(
        tmp_path: Path, guest: Callable[[Reply], FakeGuest]) -> None:
    guest(echo_agent)
    done = subprocess.run([sys.executable, "-m", "node_agent.drivers.qemu.vm_exec",
                           str(tmp_path), "--", "a", "b"], capture_output=True, timeout=30,
                          check=False)
    assert (done.returncode, done.stdout, done.stderr) == (2, b"a\0b", b"limit=0")


def test_concurrent_calls_take_turns(tmp_path: Path,
                                     guest: Callable[[Reply], FakeGuest]) -> None:
    guest(echo_agent)
    codes: list[int] = []
    threads = [threading.Thread(target=lambda n=n: codes.append(
        agent.exec_in_vm(tmp_path, ["x"] * n).exit_code)) for n in range(1, 6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [1, 2, 3, 4, 5]


def test_a_call_with_a_lock_timeout_gives_up_on_a_busy_agent(
        tmp_path: Path, guest: Callable[[Reply], FakeGuest]) -> None:
    guest(echo_agent)
    with open(tmp_path / agent.LOCK, "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another call (another process) runs
        started = time.monotonic()
        with pytest.raises(agent.AgentUnavailable, match="busy"):
            agent.exec_in_vm(tmp_path, ["x"], lock_timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 2
    assert agent.exec_in_vm(tmp_path, ["x"], lock_timeout=0.3).exit_code == 1
