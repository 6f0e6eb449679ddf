"""Pre-vote and the disruptive-servers rule wired into pysyncobj 0.3.17 (pinned).

pysyncobj has no pre-vote and no hook for one, so ``LeadershipSyncObj`` (a base of
``raft._PromptSyncObj``) steps in at the two places that matter (its private names, as
raft.py does elsewhere):

- the tick: just before pysyncobj would see its election deadline passed and start an
  election (raise its term, vote for itself, send RequestVote), it restarts the
  countdown and asks for pre-votes instead (``prevote.py``). A majority of yes sets the
  deadline to 0 and lets pysyncobj's own election run in the next tick. A leadership
  transfer (``timeout_now``) and a lone voter skip pre-vote, as etcd does.
- message handling: pre-vote requests and answers are handled here and never reach
  pysyncobj; a RequestVote that reaches a member with a current leader is dropped (its
  term not adopted); an AppendEntries from a leader of the current term or a later one
  is noted as the last contact with a leader, and ends any pre-vote round.

Check-quorum (an isolated leader stepping down) is pysyncobj's ``leaderFallbackTimeout``,
set in ``raft.raft_conf``. Every message also records when its sender was last heard
from, for ``reachability`` (the no-quorum judgement of ``quorum.py``). Not supported:
``transferLeadership`` (corral does not call it), since followers that hear the old
leader drop the target's RequestVote.
"""

from __future__ import annotations

import logging
from typing import Any

from pysyncobj import SyncObj
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.syncobj import _RAFT_STATE

from cluster.state.prevote import (
    PRE_VOTE,
    PRE_VOTE_RESPONSE,
    PreVoteRequest,
    PreVoteResponse,
    PreVoteRound,
    Voter,
    grant_pre_vote,
    ignore_vote,
    parse_request,
    parse_response,
)
from cluster.state.quorum import Reachability, leader_known, reachability

log = logging.getLogger(__name__)


class LeadershipSyncObj(SyncObj):  # type: ignore[misc]
    """A SyncObj with pre-vote and the disruptive-servers rule (module docstring)."""

    _prevote: PreVoteRound | None = None
    _prevote_won: tuple[int, float] | None = None  # (term, when) of a won round
    _leader_heard_at: float | None = None  # monotonic time of the last AppendEntries
    # Counters for tests and logs: rounds started, real elections let through, and
    # RequestVotes dropped because a leader was current.
    pre_vote_rounds = 0
    elections_started = 0
    votes_ignored = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before SyncObj.__init__: its tick thread starts in there. Written by the tick
        # thread only (one key per voter, a float each); read from the event loop.
        self._heard: dict[str, float] = {}
        self._started_at = monotonic_time()
        super().__init__(*args, **kwargs)

    def reachability(self, grace: float) -> Reachability:
        """Whether this member can tell that the cluster has no quorum (``quorum.py``):
        read from another thread, without stopping the tick."""
        now = monotonic_time()
        for _ in range(3):  # the tick thread may change the voter set while it is copied
            try:
                partners = [str(n.id) for n in list(self._SyncObj__otherNodes)]
                heard = dict(self._heard)
                break
            except RuntimeError:
                continue
        else:
            return Reachability(0, 0, False)  # cannot tell: never refuse on a guess
        known = leader_known(self._SyncObj__raftState == _RAFT_STATE.LEADER,
                             self._leader_heard_at, now, grace)
        return reachability(now, self._SyncObj__selfNode is not None, partners, heard,
                            self._started_at, known, grace)

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802, N803 - pysyncobj's names
        self._pre_vote_tick()
        super()._onTick(timeToWait)

    def _voter(self) -> Voter:
        """This member's view for a vote or pre-vote decision."""
        heard = self._leader_heard_at
        return Voter(term=int(self._SyncObj__raftCurrentTerm),
                     last_log_index=int(self._SyncObj__getCurrentLogIndex()),
                     last_log_term=int(self._SyncObj__getCurrentLogTerm()),
                     since_leader=None if heard is None else monotonic_time() - heard,
                     is_leader=self._SyncObj__raftState == _RAFT_STATE.LEADER)

    def _pre_vote_tick(self) -> None:
        """Turn an election that pysyncobj is about to start into a pre-vote round,
        unless a round for exactly that term was just won."""
        if self._SyncObj__selfNode is None or not self._SyncObj__otherNodes:
            return  # a non-voter never elects; a lone voter needs no one's vote
        if self._SyncObj__raftState == _RAFT_STATE.LEADER:
            self._prevote = self._prevote_won = None
            return
        if self._SyncObj__transferInProgress:
            return  # the leader asked this member to take over (timeout_now)
        now = monotonic_time()
        deadline: float = getattr(self, "_SyncObj__raftElectionDeadline")  # noqa: B009
        if deadline >= now:
            return
        won, self._prevote_won = self._prevote_won, None
        term = int(self._SyncObj__raftCurrentTerm) + 1
        if won is not None and won[0] == term and now - won[1] < self._getConf().raftMaxTimeout:
            self.elections_started += 1
            return  # pysyncobj starts the real election in this tick
        if not self._SyncObj__connectedToAnyone():
            return  # pysyncobj would not start one either
        self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()
        if getattr(self, "_SyncObj__raftLeader") is not None:  # noqa: B009 - as pysyncobj elects
            self._SyncObj__raftLeader = None
            self._SyncObj__onLeaderChanged()
        voters = len(self._SyncObj__otherNodes) + 1
        self._prevote = PreVoteRound(term, voters, {str(self._SyncObj__selfNode.id)})
        self.pre_vote_rounds += 1
        request = PreVoteRequest(term, int(self._SyncObj__getCurrentLogIndex()),
                                 int(self._SyncObj__getCurrentLogTerm()))
        log.debug("pre-vote for term %d (last log %d/%d)", term, request.last_log_index,
                  request.last_log_term)
        for node in list(self._SyncObj__otherNodes):
            self._SyncObj__transport.send(node, request.message())

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802
        kind = message.get("type") if isinstance(message, dict) else None
        node_id = getattr(node, "id", None)
        if node_id is not None:
            self._heard[str(node_id)] = monotonic_time()
        if kind == PRE_VOTE:
            self._on_pre_vote(node, message)
            return
        if kind == PRE_VOTE_RESPONSE:
            self._on_pre_vote_response(node, message)
            return
        if kind == "request_vote" and self._SyncObj__selfNode is not None \
                and ignore_vote(self._voter(), self._getConf().raftMinTimeout):
            self.votes_ignored += 1
            log.debug("ignored a RequestVote for term %s from %s: the leader is current",
                      message.get("term"), getattr(node, "id", node))
            return
        if kind == "append_entries" and isinstance(message.get("term"), int) \
                and message["term"] >= self._SyncObj__raftCurrentTerm:
            self._leader_heard_at = monotonic_time()
            self._prevote = self._prevote_won = None
        super()._SyncObj__onMessageReceived(node, message)

    def _on_pre_vote(self, node: Any, message: Any) -> None:
        """Answer a voter's pre-vote; one from a non-voter or of the wrong shape is
        dropped."""
        request = parse_request(message)
        if request is None or self._SyncObj__selfNode is None \
                or node not in self._SyncObj__otherNodes:
            return
        granted = grant_pre_vote(request, self._voter(), self._getConf().raftMinTimeout)
        self._SyncObj__transport.send(node, PreVoteResponse(
            request.term, granted, int(self._SyncObj__raftCurrentTerm)).message())

    def _on_pre_vote_response(self, node: Any, message: Any) -> None:
        """Count a yes for the current round; with a majority, let the election run."""
        response = parse_response(message)
        round_ = self._prevote
        if response is None or round_ is None or response.term != round_.term \
                or not response.granted or node not in self._SyncObj__otherNodes:
            return
        if round_.term != int(self._SyncObj__raftCurrentTerm) + 1:
            self._prevote = None  # this member's term moved on since it asked
            return
        if round_.grant(str(node.id)):
            self._prevote = None
            self._prevote_won = (round_.term, monotonic_time())
            self._SyncObj__raftElectionDeadline = 0.0
            log.debug("pre-vote for term %d won", round_.term)
