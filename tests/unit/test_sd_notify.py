"""``cluster.sd_notify`` against real unix datagram sockets: a path and an abstract name
(``@``), what systemd hands a ``Type=notify`` service; no socket, no systemd."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.sd_notify import NOTIFY_SOCKET_ENV, Notifier, message, notify_address


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound at a path, and the $NOTIFY_SOCKET value naming it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield sock, str(path)


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket on an abstract name, and its value with the leading ``@``."""
    name = f"corral-test-notify-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        yield sock, "@" + name


def test_ready_and_status_arrive_as_one_datagram_on_a_path(
        receiver: tuple[socket.socket, str]) -> None:
    sock, value = receiver
    notifier = Notifier.from_environ({NOTIFY_SOCKET_ENV: value})
    assert notifier.active
    assert notifier.notify("READY=1", "STATUS=serving member m1")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving member m1"


def test_an_abstract_socket_is_reached_through_its_at_sign(
        abstract_receiver: tuple[socket.socket, str]) -> None:
    sock, value = abstract_receiver
    notifier = Notifier.from_environ({NOTIFY_SOCKET_ENV: value})
    assert notifier.notify("STOPPING=1")
    assert sock.recv(4096) == b"STOPPING=1"


def test_notify_async_sends_from_a_worker_thread(
        abstract_receiver: tuple[socket.socket, str]) -> None:
    sock, value = abstract_receiver
    notifier = Notifier.from_environ({NOTIFY_SOCKET_ENV: value})
    assert asyncio.run(notifier.notify_async("READY=1"))
    assert sock.recv(4096) == b"READY=1"


def test_the_variable_is_taken_out_of_the_environment_children_inherit(
        receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """sd_notify(unset_environment=1): lxc-start, dnsmasq or QEMU must not speak for the
    daemon (systemd would log their messages as foreign, or take them for its)."""
    sock, value = receiver
    monkeypatch.setenv(NOTIFY_SOCKET_ENV, value)
    notifier = Notifier.from_environ()
    child = subprocess.run([sys.executable, "-c",
                            f"import os; print(os.environ.get({NOTIFY_SOCKET_ENV!r}, ''))"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == ""
    assert NOTIFY_SOCKET_ENV not in os.environ
    assert notifier.notify("READY=1")
    assert sock.recv(4096) == b"READY=1"


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.active
    assert not notifier.notify("READY=1")
    assert not asyncio.run(notifier.notify_async("READY=1"))


def test_a_socket_nobody_listens_on_is_logged_not_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_environ({NOTIFY_SOCKET_ENV: str(tmp_path / "gone")})
    assert not notifier.notify("READY=1")
    assert "notifying systemd (READY=1) failed" in caplog.text


@pytest.mark.parametrize("value", ["", "@", "relative/path", "vsock:2:1234"])
def test_values_that_are_not_unix_addresses_disable_it(value: str) -> None:
    assert notify_address(value) is None
    assert not Notifier.from_environ({NOTIFY_SOCKET_ENV: value}).active


@given(st.text(alphabet=st.characters(blacklist_characters="\0", min_codepoint=33,
                                      max_codepoint=0x7e), min_size=1, max_size=90))
def test_an_at_name_maps_to_the_abstract_address_of_the_same_name(name: str) -> None:
    assert notify_address("@" + name) == b"\0" + name.encode()
    assert notify_address("/" + name) == "/" + name


@pytest.mark.parametrize("bad", ["READY", "=1", "STATUS=a\nREADY=1"])
def test_a_malformed_assignment_is_refused_before_sending(bad: str) -> None:
    with pytest.raises(ValueError):
        message("STOPPING=1", bad)
