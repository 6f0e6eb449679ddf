"""The Raft port gives nothing to a peer without the key (issue: an unauthenticated
pysyncobj port unpickled what it was sent, as root). Real pysyncobj on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

from pysyncobj import SyncObj, SyncObjConf

from cluster.state.raft import RaftStore
from cluster.transport.raft_secret import local_raft_password
from tests.raft_probe import ask_status, listeners_of, send_file_creating_pickle


def _address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _wait_listening(address: str, timeout: float = 5.0) -> None:
    port = address.rpartition(":")[2]
    deadline = time.monotonic() + timeout
    while not any(a.endswith(f":{port}") for a in listeners_of(os.getpid())):
        assert time.monotonic() < deadline, f"nothing listens on {address}"
        time.sleep(0.02)


def test_the_probe_runs_code_through_a_port_without_a_password(tmp_path: Path) -> None:
    """The check is real: pysyncobj without a password runs the payload and answers
    ``status`` (what corral's Raft port did before it always had a password)."""
    address = _address()
    sync = SyncObj(address, [], SyncObjConf(autoTickPeriod=0.05))
    try:
        _wait_listening(address)
        port = address.rpartition(":")[2]
        assert f"0.0.0.0:{port}" in listeners_of(os.getpid())  # every interface
        send_file_creating_pickle(address, tmp_path / "pwned")
        assert (tmp_path / "pwned").exists()
        assert ask_status(address) != b""
    finally:
        sync.destroy_synchronous()


def test_a_store_binds_its_address_only_and_ignores_unauthenticated_pickles(
        tmp_path: Path) -> None:
    address = _address()

    async def scenario() -> None:
        store = RaftStore(address, [], tmp_path / "raft", local_raft_password(tmp_path))
        await store.start()
        try:
            listening = listeners_of(os.getpid())
            assert address in listening
            port = address.rpartition(":")[2]
            assert f"0.0.0.0:{port}" not in listening and f"[::]:{port}" not in listening
            await asyncio.to_thread(send_file_creating_pickle, address, tmp_path / "pwned")
            assert not (tmp_path / "pwned").exists()
            assert await asyncio.to_thread(ask_status, address) == b""
            assert store.leader() == address  # still running, still its own leader
        finally:
            await store.close()

    asyncio.run(scenario())


def test_the_local_secret_is_root_only_and_kept(tmp_path: Path) -> None:
    first = local_raft_password(tmp_path)
    assert len(first) >= 32
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    assert local_raft_password(tmp_path) == first
    assert not list(tmp_path.glob("*.tmp"))


def test_a_store_refuses_to_run_without_a_password(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RaftStore(_address(), [], tmp_path, "")
        try:
            await store.start()
        except ValueError as exc:
            assert "password" in str(exc)
        else:
            raise AssertionError("a Raft port without a password was opened")
        finally:
            await store.close()

    asyncio.run(scenario())
