"""The operation that settles a command whose outcome was unknown (cluster/api/outcomes.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from cluster.api import outcomes
from cluster.api.op_registry import Operations
from cluster.state.commands import Result, fail
from cluster.state.errors import OutcomeUnknown, Unavailable


def unknown(age: float = 0.0) -> OutcomeUnknown:
    return OutcomeUnknown("profile.create", "c0ffee", time.time() - age, 7, 20.0)


def test_the_error_says_what_is_unknown_and_that_it_may_still_happen() -> None:
    text = str(unknown())
    assert "outcome is unknown" in text and "profile.create c0ffee" in text
    assert "7 tries with the same id" in text and "may still take effect" in text


def answers(*values: Result | None | Exception) -> outcomes.Settle:
    """A settle function that answers ``values`` in turn (exceptions are raised)."""
    left = list(values)

    async def settle(command_id: str, timeout: float) -> Result | None:
        assert command_id == "c0ffee"
        value = left.pop(0)
        if isinstance(value, Exception):
            raise value
        return value

    return settle


def run_operation(settle: outcomes.Settle, age: float = 0.0) -> tuple[dict[str, object], str]:
    async def main() -> tuple[dict[str, object], str]:
        ops = Operations("m1", lambda op: None)
        ops.follow_unknown = lambda exc, what: outcomes.follow(ops, settle, exc, what)
        message = ops.explain_unknown(unknown(age), "PUT /1.0/profiles/p")
        (op,) = ops.all()
        await asyncio.wait_for(op.done.wait(), 10)
        return op.to_dict(), message

    return asyncio.run(main())


@pytest.fixture(autouse=True)
def quick_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcomes, "PAUSE_SECONDS", 0.01)


def test_applied_after_the_quorum_came_back() -> None:
    op, message = run_operation(answers(Unavailable("no quorum"), Unavailable("no quorum"),
                                        Result(True, {"name": "p"})))
    assert message.startswith("PUT /1.0/profiles/p: The outcome is unknown")
    assert f"Follow /1.0/operations/{op['id']} to learn whether it did" in message
    assert op["status"] == "Success" and op["metadata"] == {
        "state": "applied", "applied": True, "command": "c0ffee"}


def test_never_applied_is_safe_to_retry() -> None:
    op, _ = run_operation(answers(None))
    assert op["status"] == "Failure"
    assert op["err"] == "PUT /1.0/profiles/p was not applied: it is safe to retry"


def test_applied_but_refused_reports_the_refusal() -> None:
    op, _ = run_operation(answers(fail(412, "ETag mismatch")))
    assert op["status"] == "Failure" and "was refused: ETag mismatch" in str(op["err"])


def test_still_unknown_once_the_results_may_be_forgotten() -> None:
    op, _ = run_operation(answers(Unavailable("no quorum")), age=outcomes.SETTLE_SECONDS + 1)
    assert op["status"] == "Failure" and "still unknown" in str(op["err"])
