"""The pure pre-vote decisions (cluster/state/prevote.py): when a pre-vote is granted,
when a RequestVote is ignored, how a round is won, and that messages of the wrong shape
are dropped."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cluster.state.prevote import (
    PRE_VOTE,
    PreVoteRequest,
    PreVoteResponse,
    PreVoteRound,
    Voter,
    grant_pre_vote,
    ignore_vote,
    log_up_to_date,
    parse_request,
    parse_response,
)

MIN = 0.6


def _voter(term: int = 5, index: int = 100, last: int = 5, since: float | None = None,
           leader: bool = False) -> Voter:
    return Voter(term=term, last_log_index=index, last_log_term=last, since_leader=since,
                 is_leader=leader)


def test_granted_when_no_leader_is_heard_and_the_log_is_as_good() -> None:
    assert grant_pre_vote(PreVoteRequest(6, 100, 5), _voter(), MIN)
    assert grant_pre_vote(PreVoteRequest(6, 100, 5), _voter(since=MIN), MIN)  # just too old
    assert grant_pre_vote(PreVoteRequest(6, 50, 6), _voter(), MIN)  # later last term wins


def test_refused_while_a_leader_is_current() -> None:
    """The returning follower's case: the others hear the leader, the leader is one."""
    assert not grant_pre_vote(PreVoteRequest(6, 100, 5), _voter(since=0.05), MIN)
    assert not grant_pre_vote(PreVoteRequest(6, 100, 5), _voter(since=MIN - 0.01), MIN)
    assert not grant_pre_vote(PreVoteRequest(99, 10**6, 99), _voter(leader=True), MIN)


def test_refused_for_a_log_behind() -> None:
    assert not grant_pre_vote(PreVoteRequest(6, 99, 5), _voter(), MIN)  # shorter, same term
    assert not grant_pre_vote(PreVoteRequest(6, 500, 4), _voter(), MIN)  # older last term


def test_refused_for_a_term_not_later_than_the_voters() -> None:
    assert not grant_pre_vote(PreVoteRequest(5, 100, 5), _voter(), MIN)
    assert not grant_pre_vote(PreVoteRequest(4, 100, 5), _voter(), MIN)


def test_a_request_vote_is_ignored_only_while_a_leader_is_current() -> None:
    assert ignore_vote(_voter(since=0.1), MIN)
    assert ignore_vote(_voter(leader=True), MIN)
    assert not ignore_vote(_voter(since=None), MIN)
    assert not ignore_vote(_voter(since=MIN + 0.1), MIN)


@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50), st.integers(0, 50))
def test_up_to_date_is_raft_election_restriction(a_index: int, a_term: int, b_index: int,
                                                 b_term: int) -> None:
    """A total preorder: of two logs at least one is as up to date as the other, and a
    log is as up to date as itself."""
    assert log_up_to_date(a_index, a_term, a_index, a_term)
    assert log_up_to_date(a_index, a_term, b_index, b_term) \
        or log_up_to_date(b_index, b_term, a_index, a_term)
    assert log_up_to_date(a_index, a_term, b_index, b_term) == (
        (a_term, a_index) >= (b_term, b_index))


@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 1000),
       st.floats(0, MIN, exclude_max=True), st.booleans())
def test_never_granted_with_a_current_leader(term: int, index: int, last: int,
                                             since: float, leader: bool) -> None:
    voter = _voter(term=0, index=0, last=0, since=since, leader=leader)
    assert not grant_pre_vote(PreVoteRequest(term, index, last), voter, MIN)


@given(st.integers(1, 7), st.data())
def test_a_round_is_won_with_a_strict_majority(voters: int, data: st.DataObject) -> None:
    ids = [f"m{i}" for i in range(voters)]
    yes = data.draw(st.lists(st.sampled_from(ids), unique=True))
    round_ = PreVoteRound(term=3, voters=voters)
    for voter in yes:
        round_.grant(voter)
        round_.grant(voter)  # counted once
    assert round_.won() == (len(yes) > voters // 2)


def test_a_lone_yes_does_not_win_three() -> None:
    round_ = PreVoteRound(term=3, voters=3, granted={"self"})
    assert not round_.won()
    assert round_.grant("m2")


def test_messages_round_trip_and_bad_shapes_are_dropped() -> None:
    request = PreVoteRequest(7, 12, 6)
    assert parse_request(request.message()) == request
    response = PreVoteResponse(7, True, 6)
    assert parse_response(response.message()) == response
    bad: list[Any] = [
        None, "corral_pre_vote", [], {"type": PRE_VOTE},
        {"type": PRE_VOTE, "term": "7", "last_log_index": 1, "last_log_term": 1},
        {"type": PRE_VOTE, "term": True, "last_log_index": 1, "last_log_term": 1},
        {"type": PRE_VOTE, "term": -1, "last_log_index": 1, "last_log_term": 1},
        {"type": "request_vote", "term": 7, "last_log_index": 1, "last_log_term": 1},
    ]
    for message in bad:
        assert parse_request(message) is None, message
    assert parse_response({**response.message(), "granted": "yes"}) is None
    assert parse_response({**response.message(), "voter_term": None}) is None
    assert parse_response(request.message()) is None
