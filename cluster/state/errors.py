"""Typed failures of state commands.

::

    StateError            a command was refused; carries an HTTP-like ``code``
     +-- BadRequest       400: malformed or invalid input
     +-- NotFound         404: the named record does not exist
     +-- Conflict         409: the record exists already or is busy
     +-- PreconditionFailed 412: the record's ETag is not the client's ``If-Match``
     +-- Unavailable      503: no leader, no quorum, replica not ready
          +-- OutcomeUnknown   a command neither committed nor refused after its retries
          +-- NoQuorum         refused before it was sent: no quorum within reach (not applied)
          +-- ReplicaDamaged   this member's Raft journal or dump does not check: it serves nothing

``apply`` never raises (an exception inside a replicated method blocks the
pysyncobj log forever); it returns a ``Result`` holding one of these codes.
The store raises these exceptions on the caller's side.
"""

from __future__ import annotations

from corral_shared.errors import CodedError


class StateError(CodedError):
    code = 500


class BadRequest(StateError):
    code = 400


class NotFound(StateError):
    code = 404


class Conflict(StateError):
    code = 409


class PreconditionFailed(StateError):
    code = 412


class Unavailable(StateError):
    code = 503


_BY_CODE: dict[int, type[StateError]] = {
    400: BadRequest, 404: NotFound, 409: Conflict, 412: PreconditionFailed, 503: Unavailable}


def error_for(code: int, message: str) -> StateError:
    """Rebuild the typed error a ``Result`` describes."""
    return _BY_CODE.get(code, StateError)(message, code)


class OutcomeUnknown(Unavailable):
    """A command whose every try timed out or met a leader change: it may still commit.

    The API answers with an operation that settles it (``RaftStore.settle``), so the
    client learns whether it took effect instead of guessing; a retry must reuse the
    command id (the store does) or it could apply twice."""

    def __init__(self, command_type: str, command_id: str, command_time: float,
                 tries: int, seconds: float) -> None:
        super().__init__(
            f"The outcome is unknown: command {command_type} {command_id} was neither "
            f"committed nor refused within {seconds:g} s ({tries} tries with the same id); "
            "it may still take effect")
        self.command_type = command_type
        self.command_id = command_id
        self.command_time = command_time


class NoQuorum(Unavailable):
    """A command refused before it was sent, because this member can tell that no
    quorum is within reach (``state/quorum.py``): its outcome is known, it was not
    applied, and a retry once the cluster has a quorum again is safe."""

    def __init__(self, reachable: int, voters: int) -> None:
        super().__init__(f"cluster has no quorum: {reachable} of {voters} voters reachable")
        self.reachable = reachable
        self.voters = voters


class ReplicaDamaged(Unavailable):
    """A Raft journal, meta file or dump that does not check (a bad record in the
    middle, a meta file whose checksum fails, a dump that does not load): the member
    must not serve the replica it holds. ``offset`` is -1 when the whole file is bad."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        where = f" at offset {offset}" if offset >= 0 else ""
        super().__init__(f"{path} is damaged{where}: {reason}")
        self.path = path
        self.offset = offset
