"""Can this member tell that the cluster has no quorum? A pure judgement.

A write on a member cut off from the majority used to wait out ``RaftStore.submit``'s
whole budget and end "outcome unknown", though nothing could ever have committed it.
When this member can *tell* that no quorum is within reach, a write is refused at once,
before the command is sent, so its outcome is known (not applied)::

    refuse  <=>  no leader is known  AND  fewer than a majority of voters (this member
                 included, if it votes) were heard from within the last ``grace`` s

- *Heard from*: any Raft message received from that voter (``leadership.py`` records
  the time of each). A member without a leader asks every voter for a pre-vote each
  election timeout (0.6-1 s), and every reachable voter answers, yes or no; a leader
  hears every follower's replies every 50 ms. So a reachable voter is heard within an
  election timeout; one not heard for ``grace`` (two of them) is not reachable.
- *A leader is known* (``leader_known``): this member leads (check-quorum deposes a leader
  that has not heard from a majority for ``leaderFallbackTimeout``, 1 s), or it heard a
  leader's AppendEntries within ``grace``, even if a pre-vote round has begun since. The
  leader then speaks for the quorum, which this member cannot see (a follower in a
  5-member cluster hears only the leader).
- The grace keeps a normal election from refusing writes: the old leader is still
  "known" for ``grace`` after its last message, by which time the pre-vote round has
  made every reachable voter answer.
- A voter never heard from since Raft started counts as heard at the start, so a member
  that just started is given the grace too.

A write already sent when quorum is lost keeps its "outcome unknown" answer: it may
have reached the leader. Only the refusal here is known not to have applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Reachability:
    """How many voters this member reached lately, out of how many, and whether it
    concluded that the cluster has no quorum."""

    reachable: int
    voters: int
    no_quorum: bool

    def message(self) -> str:
        return f"cluster has no quorum: {self.reachable} of {self.voters} voters reachable"


def majority(voters: int) -> int:
    """The fewest voters that form a quorum of ``voters``."""
    return voters // 2 + 1


def leader_known(is_leader: bool, leader_heard_at: float | None, now: float,
                 grace: float) -> bool:
    """Whether this member knows a leader: it leads, or it heard a leader's AppendEntries
    within ``grace``. Not pysyncobj's leader field: a pre-vote round clears that the
    moment the election timeout passes (0.6-1 s after the last message), before the other
    voters' answers arrive, and a follower has heard nothing from the other followers
    while a leader lived; a write in that moment was refused though two of three voters
    were up (a CI run's leader kill -9)."""
    return is_leader or (leader_heard_at is not None and now - leader_heard_at <= grace)


def reachability(now: float, self_votes: bool, partners: Iterable[str],
                 heard: Mapping[str, float], started: float, leader_known: bool,
                 grace: float) -> Reachability:
    """Judge quorum from this member's own observations (module docstring).

    ``partners``: the other voters' ids; ``heard``: when each was last heard from (ids
    missing count as heard at ``started``); ``self_votes``: whether this member is a
    voter (a non-voter counts only the others)."""
    others = list(dict.fromkeys(partners))
    recent = sum(1 for p in others if now - heard.get(p, started) <= grace)
    reachable = recent + (1 if self_votes else 0)
    voters = len(others) + (1 if self_votes else 0)
    lost = not leader_known and voters > 0 and reachable < majority(voters)
    return Reachability(reachable, voters, lost)
