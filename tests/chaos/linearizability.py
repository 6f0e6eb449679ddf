"""Is each key's history linearizable, as a register with read, write, create, CAS, delete?

The search is Wing & Gong's (1993, "Testing and verifying concurrent objects"): walk the
history's call and return events in time order and try to take effect ("linearize") each op
whose call has been seen, backtracking when an op's return is reached before it could be
placed. Lowe (2017, "Testing for linearizability") made it practical by remembering every
(set of linearized ops, register state) configuration already explored, so the search never
explores one twice; Porcupine (Athalye, ``checker.go``) and Knossos do the same, and so do we,
with the linked list of events that Porcupine lifts ops out of and puts back.

How outcomes enter the search, as in Knossos and Porcupine:

- ``fail`` ops are dropped: they definitely did not take effect.
- ``unknown`` reads are dropped: they observed nothing and changed nothing.
- ``unknown`` mutations never return (their return event is at +inf): each may take effect
  at any time after its call, or never (the search drops it when it reaches its return).
- The members' final states, when given, are reads invoked after every other op returned;
  an ``unknown`` op must then take effect before them or never, since the suite snapshots
  the state only after it has healed the cluster and let it converge.

Histories of a few hundred ops per key check in milliseconds when they are linearizable. A
non-linearizable one must be searched exhaustively, which can explode with many concurrent
``unknown`` ops, so the search has a step budget and may answer "undecided".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from .history import STATE_CHANGES, History, Kind, Op, Outcome, Value, canonical

MAX_STEPS = 1_000_000
"""Search steps per key before giving up (about a few seconds of Python)."""

State = str | None
"""The register's value in canonical JSON, ``None`` when the key is absent."""


class Verdict(StrEnum):
    """The answer for one key."""

    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    UNDECIDED = "undecided"


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict on one key, with why when it is not linearizable."""

    key: str
    verdict: Verdict
    ops: int
    steps: int
    explanation: str = ""

    @property
    def ok(self) -> bool:
        """True only when a linearization was found."""
        return self.verdict is Verdict.LINEARIZABLE


def check_linearizable(history: History, max_steps: int = MAX_STEPS) -> dict[str, KeyResult]:
    """Check every key of ``history`` on its own (linearizability is compositional).

    The members' final states in ``history.final`` join each key's history as final reads.
    Instance starts and stops (``STATE_CHANGES``) are not register ops: left out here.
    """
    registers = {key: [op for op in ops if op.kind not in STATE_CHANGES]
                 for key, ops in history.by_key().items()}
    return {key: check_key(key, ops, history.initial.get(key),
                           {member: state.get(key) for member, state in history.final.items()},
                           max_steps)
            for key, ops in registers.items() if ops}


def check_key(key: str, ops: Sequence[Op], initial: Value = None,
              final_reads: Mapping[str, Value] | None = None,
              max_steps: int = MAX_STEPS) -> KeyResult:
    """Search for a linearization of one key's ``ops`` from the register value ``initial``.

    ``final_reads`` maps each member to the value it holds after the run; see the module
    docstring for what that implies for ``unknown`` ops.
    """
    calls = _calls(ops, final_reads or {})
    search = _Search(calls, canonical(initial), max_steps)
    verdict = search.run()
    explanation = "" if verdict is Verdict.LINEARIZABLE else search.explain()
    return KeyResult(key, verdict, len(calls), search.steps, explanation)


@dataclass(frozen=True, slots=True)
class _Call:
    """One op as the search sees it: canonical values, a window, and a definite flag."""

    op: Op
    kind: Kind
    value: State
    expected: State
    invoke: float
    deadline: float
    definite: bool


def _calls(ops: Sequence[Op], final_reads: Mapping[str, Value]) -> list[_Call]:
    """The ops the search must place, then one read per member after all of them."""
    kept = [op for op in ops if op.outcome is Outcome.OK
            or (op.outcome is Outcome.UNKNOWN and op.kind is not Kind.READ)]
    if not final_reads:
        return [_call(op, op.deadline) for op in kept]
    end = max([op.invoke for op in kept] + [op.deadline for op in kept
                                            if op.deadline < math.inf] + [0.0])
    calls = [_call(op, min(op.deadline, end)) for op in kept]
    for n, (member, value) in enumerate(final_reads.items()):
        read = Op(-1 - n, f"final@{member}", Kind.READ, ops[0].key if ops else "", end + 1.0,
                  end + 2.0, Outcome.OK, value, member=member)
        calls.append(_call(read, read.deadline))
    return calls


def _call(op: Op, deadline: float) -> _Call:
    return _Call(op, op.kind, canonical(op.result), canonical(op.expected), op.invoke,
                 deadline, op.outcome is Outcome.OK)


def _step(state: State, call: _Call) -> tuple[bool, State]:
    """Whether ``call`` can take effect in ``state``, and the register's state after it.

    An ``unknown`` mutation that could not take effect here (a CAS whose version no longer
    matches) is not refused for good: the search may still drop it at its deadline.
    """
    if call.kind is Kind.READ:
        return state == call.value, state
    if call.kind is Kind.WRITE:
        return True, call.value
    if call.kind is Kind.CREATE:
        return state is None, call.value
    if call.kind is Kind.CAS:
        return state == call.expected, call.value
    return state is not None, None  # DELETE


class _Entry:
    """A call or return event in Porcupine's doubly linked list; ``match`` is its pair."""

    __slots__ = ("index", "is_call", "match", "prev", "next")

    def __init__(self, index: int, is_call: bool) -> None:
        self.index = index
        self.is_call = is_call
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _event_list(calls: Sequence[_Call]) -> _Entry:
    """The events in time order behind a head sentinel.

    At equal times calls sort before returns, so ops that merely touch count as concurrent:
    the checker gives the cluster the benefit of clock granularity.
    """
    events = [(c.invoke, 0, i) for i, c in enumerate(calls)]
    events += [(c.deadline, 1, i) for i, c in enumerate(calls)]
    events.sort()
    head = _Entry(-1, False)
    opened: dict[int, _Entry] = {}
    last = head
    for _, kind, index in events:
        entry = _Entry(index, kind == 0)
        if kind == 0:
            opened[index] = entry
        else:
            opened[index].match, entry.match = entry, opened[index]
        entry.prev, last.next, last = last, entry, entry
    return head


def _lift(call: _Entry) -> None:
    """Take a call and its return out of the list (the op is now linearized)."""
    ret = call.match
    assert call.prev is not None and call.next is not None and ret is not None
    assert ret.prev is not None
    call.prev.next, call.next.prev = call.next, call.prev
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Entry) -> None:
    """Put back what ``_lift`` took out, in the reverse order."""
    ret = call.match
    assert call.prev is not None and call.next is not None and ret is not None
    assert ret.prev is not None
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    call.next.prev = call


class _Search:
    """Wing & Gong's backtracking search with Lowe's cache of configurations.

    ``stack`` holds, per op taken out of the event list, its call entry, the state before it
    and whether it was dropped rather than applied, so backtracking can undo it.

    An ``unknown`` op that never took effect is dropped when the search reaches its return
    (at +inf, or just before the final reads). Dropping it anywhere earlier would be the
    same (it changes nothing and nothing has to precede it) but would multiply the
    configurations by two for every pending unknown op.
    """

    def __init__(self, calls: Sequence[_Call], initial: State, max_steps: int) -> None:
        self.calls = calls
        self.head = _event_list(calls)
        self.state = initial
        self.max_steps = max_steps
        self.steps = 0
        self.stack: list[tuple[_Entry, State, bool]] = []
        self.seen: set[tuple[int, State]] = set()
        self.best: tuple[int, list[int], State, int] = (-1, [], initial, -1)

    def run(self) -> Verdict:
        """Linearizable when every op is placed or dropped; not when the search is exhausted."""
        linearized = 0
        entry = self.head.next
        while entry is not None:
            self.steps += 1
            if self.steps > self.max_steps:
                return Verdict.UNDECIDED
            taken = self._take(entry, linearized)
            if taken is not None:
                linearized, entry = taken, self.head.next
            elif entry.is_call:
                entry = entry.next
            else:  # the return of an op that could not be placed: undo the latest placement
                self._remember(entry.index)
                undone = self._backtrack(linearized)
                if undone is None:
                    return Verdict.NOT_LINEARIZABLE
                linearized, entry = undone
        return Verdict.LINEARIZABLE

    def _take(self, entry: _Entry, linearized: int) -> int | None:
        """Apply a call, or drop an unknown op at its return; the new set, or None."""
        call = self.calls[entry.index]
        if entry.is_call:
            possible, after = _step(self.state, call)
        else:
            possible, after, entry = not call.definite, self.state, self._call_of(entry)
        bits = linearized | (1 << entry.index)
        if not possible or (bits, after) in self.seen:
            return None
        self.seen.add((bits, after))
        self.stack.append((entry, self.state, not entry.is_call))
        self.state = after
        _lift(entry)
        return bits

    def _backtrack(self, linearized: int) -> tuple[int, _Entry] | None:
        """Undo placements up to the latest applied op; the set and the entry to try next.

        Undoing a drop means the op's return is reached unplaced, so undo further.
        """
        while self.stack:
            entry, self.state, dropped = self.stack.pop()
            linearized &= ~(1 << entry.index)
            _unlift(entry)
            if not dropped:
                assert entry.next is not None
                return linearized, entry.next
        return None

    @staticmethod
    def _call_of(ret: _Entry) -> _Entry:
        assert ret.match is not None
        return ret.match

    def _remember(self, blocked: int) -> None:
        """Keep the deepest partial linearization and the op that could not follow it."""
        if len(self.stack) > self.best[0]:
            order = [e.index for e, _, dropped in self.stack if not dropped]
            self.best = (len(self.stack), order, self.state, blocked)

    def explain(self) -> str:
        """Why no linearization exists, from the deepest partial one the search reached."""
        depth, order, state, blocked = self.best
        if blocked < 0:
            return f"gave up after {self.steps} steps"
        tail = "; ".join(self.calls[i].op.describe() for i in order[-3:]) or "nothing"
        return (f"at best {depth} of {len(self.calls)} ops linearize (last: {tail}), leaving "
                f"the value {_shown(state)}; then {self.calls[blocked].op.describe()} "
                "cannot take effect before it returns")


def _shown(state: State) -> str:
    return "absent" if state is None else state
