"""The chaos suite's verdict: durability and linearizability of a history, in one line.

``check(history)`` runs both checks of the issue's "Chaos suite" section; ``summarize`` adds
what only the suite knows (faults injected, whether ``corral cluster check`` agreed, how long
the cluster took to accept writes after the last heal) and renders the one-line output::

    chaos: 1204 operations, 1100 acknowledged, 38 unknown, 0 lost, 0 non-linearizable keys,
    12 faults injected, replicas agree, converged in 3.2 s      (on one line)
"""

from __future__ import annotations

from dataclasses import dataclass

from .durability import Loss, check_durability
from .history import History, Op, Outcome, validate
from .linearizability import MAX_STEPS, KeyResult, Verdict, check_linearizable

MAX_CONVERGENCE = 10.0
"""Seconds after the last heal within which the cluster must accept writes again."""


class InvalidHistory(ValueError):
    """The history is malformed (a recorder bug), so judging it would mean nothing."""


@dataclass(frozen=True, slots=True)
class Report:
    """What the checker found in one history."""

    operations: int
    acknowledged: int
    unknown: int
    losses: list[Loss]
    keys: dict[str, KeyResult]

    @property
    def lost(self) -> list[Op]:
        """The acknowledged ops that at least one member lost."""
        return list({loss.op.id: loss.op for loss in self.losses}.values())

    @property
    def non_linearizable(self) -> list[KeyResult]:
        """Keys proven not linearizable."""
        return [r for r in self.keys.values() if r.verdict is Verdict.NOT_LINEARIZABLE]

    @property
    def undecided(self) -> list[KeyResult]:
        """Keys whose search ran out of steps: neither proven nor refuted."""
        return [r for r in self.keys.values() if r.verdict is Verdict.UNDECIDED]

    @property
    def ok(self) -> bool:
        """Nothing lost and every key proven linearizable."""
        return not self.losses and all(r.ok for r in self.keys.values())

    def details(self) -> list[str]:
        """One line per problem, for the failure message and the post-mortem."""
        lines = [loss.describe() for loss in self.losses]
        return lines + [f"{r.key!r} {r.verdict}: {r.explanation}"
                        for r in self.keys.values() if not r.ok]


def check(history: History, max_steps: int = MAX_STEPS) -> Report:
    """Judge ``history``; raises InvalidHistory when it is malformed (see ``validate``)."""
    problems = validate(history)
    if problems:
        raise InvalidHistory("; ".join(problems[:5]))
    outcomes = [op.outcome for op in history.ops]
    return Report(operations=len(outcomes), acknowledged=outcomes.count(Outcome.OK),
                  unknown=outcomes.count(Outcome.UNKNOWN),
                  losses=check_durability(history),
                  keys=check_linearizable(history, max_steps))


@dataclass(frozen=True, slots=True)
class Summary:
    """The one-line outcome of a chaos run; the last three fields come from the suite."""

    report: Report
    faults: int
    replicas_agree: bool
    convergence: float | None
    max_convergence: float = MAX_CONVERGENCE

    @property
    def failures(self) -> list[str]:
        """Why the run fails (empty: it passes)."""
        found = self.report.details()
        if not self.replicas_agree:
            found.append("replicas disagree")
        if self.convergence is None or self.convergence > self.max_convergence:
            found.append(f"no write accepted within {self.max_convergence:g} s of the last heal")
        return found

    @property
    def ok(self) -> bool:
        """True when the run passes every check."""
        return not self.failures

    def line(self) -> str:
        """The issue's one-line output."""
        r = self.report
        undecided = f", {len(r.undecided)} undecided keys" if r.undecided else ""
        agree = "replicas agree" if self.replicas_agree else "replicas DISAGREE"
        converged = ("never converged" if self.convergence is None
                     else f"converged in {self.convergence:.1f} s")
        return (f"chaos: {r.operations} operations, {r.acknowledged} acknowledged, "
                f"{r.unknown} unknown, {len(r.lost)} lost, "
                f"{len(r.non_linearizable)} non-linearizable keys{undecided}, "
                f"{self.faults} faults injected, {agree}, {converged}")


def summarize(report: Report, faults: int, replicas_agree: bool,
              convergence: float | None) -> Summary:
    """Combine the checker's report with the suite's own observations.

    ``convergence`` is the seconds from the last heal to the first accepted write, or None
    when no write was accepted.
    """
    return Summary(report, faults, replicas_agree, convergence)
