"""Did every acknowledged write survive, on every member? (DESIGN.md §6, invariant 1.)

For each acknowledged mutation A of a key and each member's final value F of that key:
F must be A's result (its value, or absent after a delete), or the result of another
mutation that may have taken effect after A. B may follow A unless B returned before A was
invoked; an ``unknown`` B never returns, so it may always follow. Otherwise A was lost: a
*lost write*, or a *resurrected* key when A was a delete.

Instance starts and stops (``STATE_CHANGES``) are judged the same way on their
``status/NAME`` key: the status a member reports at the end must be what the last
acknowledged start or stop left, or what a start or stop that may follow it left. A
member on which the instance is gone is skipped there: whether that deletion was
acknowledged is judged on the ``instance/NAME`` key.

This is weaker than the linearizability check with final reads (it trusts any later
mutation, even a CAS that could never have succeeded), but it names the acknowledged op that
was lost and the member that lost it, which is what a post-mortem starts from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from .history import MUTATIONS, STATE_CHANGES, History, Kind, Op, Outcome, Value, canonical


class LossKind(StrEnum):
    """How an acknowledged mutation went missing."""

    LOST_WRITE = "lost write"
    RESURRECTED = "resurrected"
    LOST_STATE = "lost start/stop"


@dataclass(frozen=True, slots=True)
class Loss:
    """An acknowledged mutation that one member's final state contradicts."""

    kind: LossKind
    member: str
    op: Op
    found: Value

    def describe(self) -> str:
        """One line for the report."""
        found = "absent" if self.found is None else repr(self.found)
        return f"{self.kind} on {self.member}: {self.op.describe()} {self.op.key!r}, found {found}"


def check_durability(history: History) -> list[Loss]:
    """Every acknowledged mutation that some member's final state lost (empty: none).

    Without final states there is nothing to check and the answer is empty. Linear in the
    number of ops times members, so long runs with thousands of writes per key stay cheap.
    """
    losses = []
    for ops in history.by_key().values():
        mutations = [op for op in ops if op.kind in MUTATIONS | STATE_CHANGES
                     and op.outcome is not Outcome.FAIL]
        latest = _latest_writers(mutations)
        for acked in (op for op in mutations if op.outcome is Outcome.OK):
            for member, state in history.final.items():
                found = state.get(acked.key)
                if acked.kind in STATE_CHANGES and found is None:
                    continue  # the instance is gone there (judged on its own key)
                if not _explained(canonical(found), acked, latest):
                    losses.append(Loss(_loss_kind(acked), member, acked, found))
    return losses


def _latest_writers(mutations: Iterable[Op]) -> dict[str | None, float]:
    """For each value the mutations leave, the latest time one of them may take effect."""
    latest: dict[str | None, float] = {}
    for op in mutations:
        result = canonical(op.result)
        latest[result] = max(latest.get(result, -math.inf), op.deadline)
    return latest


def _explained(found: str | None, acked: Op, latest: dict[str | None, float]) -> bool:
    """Whether ``found`` is ``acked``'s result or that of a mutation that may follow it.

    Another mutation may follow ``acked`` unless it returned before ``acked`` was invoked.
    """
    return found == canonical(acked.result) or latest.get(found, -math.inf) >= acked.invoke


def _loss_kind(acked: Op) -> LossKind:
    if acked.kind in STATE_CHANGES:
        return LossKind.LOST_STATE
    return LossKind.RESURRECTED if acked.kind is Kind.DELETE else LossKind.LOST_WRITE
