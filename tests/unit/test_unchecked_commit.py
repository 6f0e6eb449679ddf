"""A follower's commit index moves only on a message that checked its log against the
leader's (``_PromptSyncObj._hold_unchecked_commit``).

pysyncobj 0.3.17 (syncobj.py 1026-1035) raised it on every AppendEntries, also on a dump
chunk that is not the last and on ``serialized: None``, which skip the log-matching
check. A deposed leader holding an entry of its old term that no majority ever had then
applied it and acknowledged its client; the new leader cut it later: an acknowledged CAS
lost and a barrier read served from a state the cluster never had (the chaos suite's long
profile found it: two non-linearizable registers)."""

from __future__ import annotations

import socket

import pytest
from pysyncobj import SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.syncobj import _COMMAND_TYPE, _RAFT_STATE, _bchr

from cluster.state.raft import _PromptSyncObj


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Register(SyncObjConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.value = "v0"

    @replicated
    def cas(self, expected: str, new: str) -> bool:
        if self.value != expected:
            return False
        self.value = new
        return True


def _member() -> tuple[_PromptSyncObj, Register, list]:
    reg = Register()
    me, b, c = (f"127.0.0.1:{_port()}" for _ in range(3))
    conf = SyncObjConf(autoTick=False, dynamicMembershipChange=False,
                       leaderFallbackTimeout=30.0, raftMinTimeout=30, raftMaxTimeout=31,
                       connectionTimeout=40)
    sync = _PromptSyncObj(me, [b, c], conf, consumers=[reg])
    nodes = sorted(sync._SyncObj__otherNodes, key=lambda n: n.id)
    return sync, reg, nodes


def _deposed_leader_with_an_uncommitted_cas():
    """m2 at 05:55:08: leader of term 1, cut off; a CAS arrives and is appended (idx 3,
    term 1) but never reaches anyone; its client waits for the apply."""
    sync, reg, (b, _c) = _member()
    sync._SyncObj__setCurrentTerm(1, sync._SyncObj__selfNode.id)
    sync._SyncObj__onBecomeLeader()          # no-op at idx 2, term 1
    acks: list = []
    reg.cas("v0", "lost-write", callback=lambda res, err: acks.append((res, err)))
    sync.doTick(0.0)                          # appended at idx 3, term 1; no quorum
    assert sync._SyncObj__getCurrentLogIndex() == 3
    assert sync._SyncObj__raftCommitIndex == 1 and not acks
    return sync, reg, b, acks


@pytest.mark.parametrize("serialized", [None, (b"chunk", True, False)],
                         ids=["serialized=None", "first-dump-chunk"])
def test_a_message_that_checked_nothing_commits_nothing(serialized: object) -> None:
    sync, reg, b, acks = _deposed_leader_with_an_uncommitted_cas()
    try:
        # Healed: the new leader b (term 2, commit 40) sends a dump chunk, or no dump.
        sync._SyncObj__onMessageReceived(b, {"type": "append_entries", "term": 2,
                                             "commit_index": 40, "serialized": serialized})
        assert sync._SyncObj__raftState == _RAFT_STATE.FOLLOWER
        assert sync._SyncObj__raftCommitIndex == 1  # nothing checked, nothing committed
        sync.doTick(0.0)
        assert sync._SyncObj__raftLastApplied <= 1 and reg.value == "v0"
        assert acks == []  # the client still waits: its outcome is unknown
        # The leader's regular AppendEntries replaces the old term's entries; then the
        # commit index moves on, and the old entries were never applied.
        sync._SyncObj__onMessageReceived(b, {
            "type": "append_entries", "term": 2, "commit_index": 40, "prevLogIdx": 1,
            "prevLogTerm": 0, "entries": [(_bchr(_COMMAND_TYPE.NO_OP), 2, 2)]})
        assert sync._SyncObj__raftCommitIndex == 2
        sync.doTick(0.0)
        assert reg.value == "v0" and sync._SyncObj__raftLastApplied == 2
        assert all(result is None for result, _ in acks)  # never told it succeeded
    finally:
        sync.destroy()
