"""Entries a leader sends again: harmless when equal to those applied, CRITICAL when not."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from pysyncobj import SyncObjConf

from cluster.state.commands import Command
from cluster.state.raft import _PromptSyncObj, _Replica
from cluster.state.resent import Entry, ResentCheck, differing

APPLIED = [(b"a", 1, 1), (b"b", 2, 1), (b"c", 3, 2)]


def test_equal_entries_do_not_differ_and_other_commands_or_terms_do() -> None:
    applied = {index: (data, term) for data, index, term in APPLIED}
    assert differing(applied, APPLIED) == []
    assert differing(applied, [(b"a", 1, 1), (b"x", 2, 1), (b"c", 3, 3)]) == [2, 3]
    assert differing(applied, [(b"z", 4, 2)]) == []  # not applied here: nothing to compare


def test_a_resend_of_the_same_entries_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    check = ResentCheck()
    check.truncated(APPLIED, last_applied=2)
    assert sorted(check.pending) == [1, 2]  # entry 3 was not applied: a plain truncation
    with caplog.at_level(logging.INFO):
        assert check.check(lambda first, count: APPLIED[first - 1:first - 1 + count]) == []
    assert check.pending == {} and not caplog.records


def test_a_differing_resend_is_critical_even_when_it_comes_in_two_batches(
        caplog: pytest.LogCaptureFixture) -> None:
    check = ResentCheck()
    check.truncated(APPLIED, last_applied=3)
    log: list[Entry] = [(b"a", 1, 1)]

    def lookup(first: int, count: int) -> list[Entry]:
        return [e for e in log if first <= e[1] < first + count]

    assert check.check(lookup) == [] and sorted(check.pending) == [2, 3]
    log += [(b"b", 2, 1), (b"other", 3, 2)]
    with caplog.at_level(logging.INFO):
        assert check.check(lookup) == [3]
    assert check.pending == {}
    assert [(r.levelname, r.getMessage()[:12]) for r in caplog.records] == [
        ("CRITICAL", "log entry 3 ")]


def _address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _one_node_with_entries() -> tuple[_PromptSyncObj, list[Entry]]:
    """A lone voter ticked by hand that has applied two commands."""
    replica = _Replica()
    sync = _PromptSyncObj(_address(), [], SyncObjConf(autoTick=False, password="test"),
                          [replica])
    for n in range(2):
        replica.apply_command(Command(id=f"p{n}", type="profile.create",
                                      args={"name": f"p{n}"}, time=1.0))
    deadline = time.monotonic() + 10
    while len(replica.state.profiles) < 2 and time.monotonic() < deadline:
        sync.doTick(0.01)
    assert len(replica.state.profiles) == 2
    applied: int = sync._SyncObj__raftLastApplied
    return sync, list(sync._SyncObj__getEntries(applied - 1, 2))


@pytest.mark.parametrize(("replacement", "critical"), [(None, False), (b"other", True)])
def test_pysyncobj_truncation_is_checked_against_what_replaces_it(
        caplog: pytest.LogCaptureFixture, replacement: bytes | None, critical: bool) -> None:
    """The glue in ``_PromptSyncObj``: truncate the last two applied entries as an
    append_entries would, write the leader's (equal or different) entries in their place,
    and let a message end."""
    sync, entries = _one_node_with_entries()
    try:
        sync._SyncObj__deleteEntriesFrom(entries[0][1])
        for data, index, term in entries:
            sync._SyncObj__raftLog.add(replacement or data, index, term)
        with caplog.at_level(logging.INFO, logger="cluster.state.resent"):
            sync._SyncObj__onMessageReceived(None, {"type": "nothing"})
        logged = [r for r in caplog.records if r.levelno == logging.CRITICAL]
        assert len(logged) == (2 if critical else 0)
        assert sync._resent.pending == {}
    finally:
        sync.destroy()
