"""Pre-vote and the "disruptive servers" rule (Raft dissertation §9.6), as pure decisions.

pysyncobj 0.3.17 starts a real election whenever a member's timer fires: it raises its
term and asks for votes. A member cut off from the others (a partition, a stopped
process) keeps doing so, so when it comes back its term is higher than the leader's,
and its first RequestVote deposes a healthy leader: an election, a new term, and
commands in flight fail, for nothing. With pre-vote, a member whose timer fired first
asks whether the others *would* vote for it at term+1, without changing any term; only
with a majority of yes does it start a real election. A member that has heard from a
current leader within the minimum election timeout says no, and ignores real
RequestVotes too (so a member without pre-vote cannot depose a leader either).

This module holds the decisions and the message shapes; ``leadership.py`` wires them
into pysyncobj (which has no hook for them) through ``_PromptSyncObj``.

The messages travel like every other Raft message, pickled dicts through pysyncobj's
encrypted, authenticated transport. A message that does not have the expected shape (a
newer or older member, a bug) is dropped by ``parse_*``: it neither grants nor counts. A
member that does not know pre-vote ignores the type (pysyncobj dispatches on ``type`` and
has no ``else``), so it never grants one: in a mixed cluster, elections are won by
members that do not use pre-vote until every member does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PRE_VOTE = "corral_pre_vote"
PRE_VOTE_RESPONSE = "corral_pre_vote_response"


@dataclass(frozen=True)
class PreVoteRequest:
    """"Would you vote for me at ``term``?" (the asker's term + 1, not yet its own)."""

    term: int
    last_log_index: int
    last_log_term: int

    def message(self) -> dict[str, Any]:
        return {"type": PRE_VOTE, "term": self.term, "last_log_index": self.last_log_index,
                "last_log_term": self.last_log_term}


@dataclass(frozen=True)
class PreVoteResponse:
    """The answer to the pre-vote for ``term``; ``voter_term`` is the voter's own term."""

    term: int
    granted: bool
    voter_term: int

    def message(self) -> dict[str, Any]:
        return {"type": PRE_VOTE_RESPONSE, "term": self.term, "granted": self.granted,
                "voter_term": self.voter_term}


@dataclass(frozen=True)
class Voter:
    """What a member knows when it decides on a vote or pre-vote.

    ``since_leader``: seconds since it last heard from a leader of its current term or a
    later one (None: never since it started, or the leader was lost); ``is_leader``: it
    is the leader itself (check-quorum makes it step down once it loses its majority,
    ``raft_conf``), which counts as hearing from a leader just now."""

    term: int
    last_log_index: int
    last_log_term: int
    since_leader: float | None
    is_leader: bool = False


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def parse_request(message: Any) -> PreVoteRequest | None:
    """A pre-vote request from a peer's message, or None if it does not have the shape."""
    if not isinstance(message, dict) or message.get("type") != PRE_VOTE:
        return None
    term, index, last = (_int(message.get(k)) for k in ("term", "last_log_index",
                                                          "last_log_term"))
    if term is None or index is None or last is None:
        return None
    return PreVoteRequest(term, index, last)


def parse_response(message: Any) -> PreVoteResponse | None:
    """A pre-vote response from a peer's message, or None if it does not have the shape."""
    if not isinstance(message, dict) or message.get("type") != PRE_VOTE_RESPONSE:
        return None
    term, voter_term, granted = (_int(message.get("term")), _int(message.get("voter_term")),
                                 message.get("granted"))
    if term is None or voter_term is None or not isinstance(granted, bool):
        return None
    return PreVoteResponse(term, granted, voter_term)


def log_up_to_date(last_index: int, last_term: int, my_index: int, my_term: int) -> bool:
    """Raft's election restriction: a log is at least as up to date as mine if its last
    term is later, or the same with an index at least as high."""
    return last_term > my_term or (last_term == my_term and last_index >= my_index)


def leader_is_current(voter: Voter, min_timeout: float) -> bool:
    """Whether ``voter`` heard from a leader within the minimum election timeout (or is
    the leader): then no election is needed, and votes for one are refused."""
    return voter.is_leader or (voter.since_leader is not None
                               and voter.since_leader < min_timeout)


def grant_pre_vote(request: PreVoteRequest, voter: Voter, min_timeout: float) -> bool:
    """Would ``voter`` vote for the asker at ``request.term``? Only if no leader is
    current for it, the term is later than its own (a real vote at a term it already
    has could not be granted after a vote or a leader of that term; the asker catches
    up from the leader instead) and the asker's log is at least as up to date. Nothing
    changes on either side: no term, no vote is recorded."""
    if leader_is_current(voter, min_timeout):
        return False
    if request.term <= voter.term:
        return False
    return log_up_to_date(request.last_log_index, request.last_log_term,
                          voter.last_log_index, voter.last_log_term)


def ignore_vote(voter: Voter, min_timeout: float) -> bool:
    """The disruptive-servers rule: a RequestVote that reaches a member with a current
    leader is dropped whole, its term not adopted. A member that was cut off (or runs
    without pre-vote) then cannot depose a leader that a majority still hears."""
    return leader_is_current(voter, min_timeout)


@dataclass
class PreVoteRound:
    """One round of pre-votes for ``term``, asked of ``voters`` members (the asker
    included, which grants its own). Won with a strict majority of yes."""

    term: int
    voters: int
    granted: set[str] = field(default_factory=set)

    def grant(self, voter_id: str) -> bool:
        """Count ``voter_id``'s yes (once); whether the round is now won."""
        self.granted.add(voter_id)
        return self.won()

    def won(self) -> bool:
        return len(self.granted) * 2 > self.voters
