"""The history of a chaos run: what each client asked, when, and what it was told.

A history is plain data, so the suite can write it to a file and a post-mortem can load it
again (``History.to_json`` / ``History.from_json``). Its JSON form::

    {"format": "corral-chaos-history/1",
     "initial": {"config/user.k1": "v0"},               # keys that existed before the run
     "ops": [{"id": 7, "client": "c2", "member": "m1",
              "kind": "cas", "key": "config/user.k1",
              "value": "c2-7", "expected": "c1-3",       # new value; value the ETag stood for
              "invoke": 12.503, "complete": 12.611,      # time.monotonic() of one process
              "outcome": "ok", "etag": "9f1c...", "error": null}, ...],
     "final": {"m1": {"config/user.k1": "c2-7", ...}, "m2": {...}}}

Each key is a register whose value is any JSON value; ``null`` means *absent*. Kinds:

- ``read``: ``value`` is what was read when ``ok`` (``null`` for a 404: a read of a missing
  key is an acknowledged read of "absent", not a failure).
- ``write``: unconditional PUT (or set a config key; ``value: null`` unsets it).
- ``create``: POST that succeeds only if the key is absent (409 otherwise).
- ``cas``: PUT with ``If-Match``; ``expected`` is the value read together with the ETag.
  Corral's and LXD's ETags are a hash of the object's content, so "the ETag still matches"
  is exactly "the value is still ``expected``", and the checker compares values. The suite
  should write a unique value per write (``f"{client}-{seq}"``): then a value also names the
  one write that produced it, which keeps the reports unambiguous.
- ``delete``: DELETE, which succeeds only if the key exists (404 otherwise).
- ``start`` / ``stop``: an instance started or stopped, on the key ``status/NAME``
  (``value`` is the status it leaves); see ``STATE_CHANGES``. The instance itself is the
  register ``instance/NAME`` (``create`` and ``delete``, its value its description).

Outcomes: ``ok`` (acknowledged), ``fail`` (definitely not applied: a 4xx such as 404, 409 or
412) and ``unknown`` (timeout, connection lost, leader change, 5xx: it may take effect, even
later, or never). ``complete`` is when the client heard back or gave up; for an ``unknown``
op the checker ignores it and treats the op as pending forever.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

FORMAT = "corral-chaos-history/1"

Value = Any
"""A JSON value (str, number, bool, list, dict); ``None`` means the key is absent."""


def canonical(value: Value) -> str | None:
    """One text per JSON value (keys sorted), hashable; ``None`` stays ``None`` (absent)."""
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


class Kind(StrEnum):
    """What an operation asked of one key."""

    READ = "read"
    WRITE = "write"
    CREATE = "create"
    CAS = "cas"
    DELETE = "delete"
    START = "start"
    STOP = "stop"


MUTATIONS = frozenset({Kind.WRITE, Kind.CREATE, Kind.CAS, Kind.DELETE})
STATE_CHANGES = frozenset({Kind.START, Kind.STOP})
"""Instance start and stop, on a ``status/NAME`` key whose value is the status they
leave (``Running``, ``Stopped``). Not a register: a start or stop of the same instance
repeats a value, and the status comes from the hosting member's report. So they are
checked for durability alone (``durability.py``), not for linearizability."""


class Outcome(StrEnum):
    """What the client learnt: applied, definitely not applied, or cannot tell."""

    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Op:
    """One request of one client and its outcome (see the module docstring for fields)."""

    id: int
    client: str
    kind: Kind
    key: str
    invoke: float
    complete: float | None
    outcome: Outcome
    value: Value = None
    expected: Value = None
    member: str | None = None
    etag: str | None = None
    error: str | None = None

    @property
    def deadline(self) -> float:
        """The latest time the op may take effect: +inf when its outcome is unknown."""
        if self.outcome is Outcome.UNKNOWN or self.complete is None:
            return math.inf
        return self.complete

    @property
    def result(self) -> Value:
        """The key's value once this mutation took effect (``None``: absent)."""
        return None if self.kind is Kind.DELETE else self.value

    def describe(self) -> str:
        """A short human form for reports, e.g. ``#7 c2 cas 'c1-3'->'c2-7' ok [12.5, 12.6]``."""
        if self.kind is Kind.CAS:
            what = f"{self.expected!r}->{self.value!r}"
        elif self.kind is Kind.DELETE:
            what = ""
        else:
            what = repr(self.value)
        end = "inf" if self.deadline == math.inf else f"{self.deadline:.3f}"
        parts = [f"#{self.id}", self.client, str(self.kind), what, str(self.outcome)]
        return " ".join(p for p in parts if p) + f" [{self.invoke:.3f}, {end}]"


@dataclass(frozen=True, slots=True)
class History:
    """Every op of a run, the keys' values before it, and each member's state after it.

    ``final`` maps member -> key -> value (a key missing there is absent on that member);
    it may be empty when the run ended without a snapshot.
    """

    ops: tuple[Op, ...]
    initial: dict[str, Value] = field(default_factory=dict)
    final: dict[str, dict[str, Value]] = field(default_factory=dict)

    def keys(self) -> list[str]:
        """The keys the ops touched, in first-use order."""
        return list(dict.fromkeys(op.key for op in self.ops))

    def by_key(self) -> dict[str, list[Op]]:
        """The ops grouped per key: each key is checked on its own (P-compositionality)."""
        groups: dict[str, list[Op]] = {}
        for op in self.ops:
            groups.setdefault(op.key, []).append(op)
        return groups

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data; ``json.dumps`` of it round-trips through ``from_json``."""
        return {"format": FORMAT, "initial": self.initial,
                "ops": [asdict(op) for op in self.ops], "final": self.final}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> History:
        """Parse what ``to_json`` produced; raises ValueError on another format."""
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} history: {data.get('format')!r}")
        ops = tuple(Op(**{**raw, "kind": Kind(raw["kind"]), "outcome": Outcome(raw["outcome"])})
                    for raw in data["ops"])
        return cls(ops, dict(data.get("initial", {})), dict(data.get("final", {})))

    def dump(self, path: Path) -> None:
        """Write the history to ``path`` for a post-mortem."""
        path.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> History:
        """Read a history written by ``dump``."""
        return cls.from_json(json.loads(path.read_text()))


def validate(history: History) -> list[str]:
    """Problems that make a history unfit to judge (empty when it is fine).

    A recorder bug must not pass for a correct cluster, so the checker refuses such a history
    rather than guessing: duplicate ids, a completion before the invocation, or a definite
    outcome without a completion time. Two writes of one value to one key are reported too,
    because then a value no longer names one write (see the module docstring).
    """
    problems = _id_problems(history.ops)
    for op in history.ops:
        if op.complete is not None and op.complete < op.invoke:
            problems.append(f"{op.describe()}: completes before it is invoked")
        if op.outcome is not Outcome.UNKNOWN and op.complete is None:
            problems.append(f"{op.describe()}: a definite outcome needs a completion time")
    return problems + _duplicate_writes(history.ops)


def _id_problems(ops: Iterable[Op]) -> list[str]:
    seen: set[int] = set()
    problems = []
    for op in ops:
        if op.id in seen:
            problems.append(f"op id {op.id} is used twice")
        seen.add(op.id)
    return problems


def _duplicate_writes(ops: Iterable[Op]) -> list[str]:
    writers: dict[tuple[str, str | None], Op] = {}
    problems = []
    for op in ops:
        if op.kind in MUTATIONS and op.kind is not Kind.DELETE and op.value is not None:
            mark = (op.key, canonical(op.value))
            if mark in writers:
                problems.append(f"{op.describe()} writes the value of #{writers[mark].id}")
            writers.setdefault(mark, op)
    return problems


class _Missing:
    pass


MISSING = _Missing()


@dataclass
class Recorder:
    """Builds a history while the suite's clients run.

    ``invoke`` before sending a request, then exactly one of ``ok``, ``fail`` or ``unknown``
    when it returns. An op still pending when ``history`` is taken (its client was cancelled)
    becomes ``unknown``: it may have taken effect. The clock is injected so tests are exact;
    it must be monotonic and shared by all clients (one process).
    """

    clock: Callable[[], float] = time.monotonic
    initial: dict[str, Value] = field(default_factory=dict)
    _done: list[Op] = field(default_factory=list)
    _pending: dict[int, Op] = field(default_factory=dict)
    _next_id: int = 0

    def invoke(self, client: str, kind: Kind, key: str, *, value: Value = None,
               expected: Value = None, member: str | None = None) -> int:
        """Record the start of a request; returns the op id to complete it with."""
        op_id, self._next_id = self._next_id, self._next_id + 1
        self._pending[op_id] = Op(op_id, client, kind, key, self.clock(), None,
                                  Outcome.UNKNOWN, value, expected, member)
        return op_id

    @property
    def invoked(self) -> int:
        """How many ops were invoked so far."""
        return self._next_id

    def ok(self, op_id: int, *, value: Value | _Missing = MISSING,
           etag: str | None = None) -> None:
        """The request was acknowledged; a read passes the ``value`` it got (None: 404)."""
        op = self._pending.pop(op_id)
        read = op.value if isinstance(value, _Missing) else value
        self._done.append(replace(op, complete=self.clock(), outcome=Outcome.OK,
                                  value=read, etag=etag))

    def fail(self, op_id: int, error: str) -> None:
        """The request was refused and definitely not applied (a 4xx)."""
        self._finish(op_id, Outcome.FAIL, error)

    def absent(self, op_id: int, key: str | None = None) -> None:
        """The request was refused because its key is absent (a 404 to a delete, or to
        a start or stop of an instance): an acknowledged read of *absent*, of ``key``
        when given (the instance's own key for a start or stop), so that the checker
        sees what the member claimed."""
        op = self._pending.pop(op_id)
        self._done.append(replace(op, kind=Kind.READ, key=key or op.key, value=None,
                                  expected=None, complete=self.clock(),
                                  outcome=Outcome.OK, error="404: read as absent"))

    def unknown(self, op_id: int, error: str) -> None:
        """The client cannot tell whether the request took effect (timeout, 5xx, ...)."""
        self._finish(op_id, Outcome.UNKNOWN, error)

    def _finish(self, op_id: int, outcome: Outcome, error: str) -> None:
        op = self._pending.pop(op_id)
        self._done.append(replace(op, complete=self.clock(), outcome=outcome, error=error))

    def history(self, final: dict[str, dict[str, Value]] | None = None) -> History:
        """The history so far, ordered by op id, with each member's ``final`` state."""
        abandoned = [replace(op, error="never completed") for op in self._pending.values()]
        ops = sorted(self._done + abandoned, key=lambda op: op.id)
        return History(tuple(ops), dict(self.initial), dict(final or {}))
