"""Instance operations of the chaos clients: create, start, stop and delete containers.

Each instance is two keys in the history (``history.py``): ``instance/NAME``, a register
created with the instance's description (a unique ``client-seq``) and deleted with it,
and ``status/NAME``, which an acknowledged start or stop sets to ``Running`` or
``Stopped``. The final state of every member reports both (``final_instances``).

These requests are asynchronous in the LXD API: the POST, PUT or DELETE answers with an
operation, which the client waits for through the same member. Outcomes:

- a 4xx to the request itself: ``fail`` (refused before anything was committed: a
  delete of a running instance, a start of a running one, an unknown image); a 404
  (no such instance) is recorded as an acknowledged read of ``instance/NAME`` as
  absent, so that a member that denies an acknowledged create is caught;
- the operation ends in ``Success``: ``ok``;
- anything else (a 5xx, a lost connection, an operation that failed or did not end in
  time): ``unknown``. A failed operation may have committed its record before the
  container part failed, so it is not a definite ``fail``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.chaos.api import Answer, request
from tests.chaos.history import Kind, Value

if TYPE_CHECKING:
    from devtools.harness import DaemonProcess
    from tests.chaos.run import Run

IMAGE = "busybox"
PREFIX = "i-"
OPERATION_WAIT = 30


@dataclass
class Instances:
    """What one client believes of the instances it made: name -> status (``?``:
    unknown after an op without a definite answer)."""

    client: str
    believed: dict[str, str] = field(default_factory=dict)


def step(run: Run, mine: Instances, seq: int, member: DaemonProcess,
         rng: random.Random) -> None:
    """One instance op: create when the client has few, else start, stop or (less
    often, so that some instances are still there at the end) delete one."""
    if len(mine.believed) < 3 and (not mine.believed or rng.random() < 0.4):
        _create(run, mine, seq, member)
        return
    name = rng.choice(sorted(mine.believed))
    status = mine.believed[name]
    if status == "?":
        status = rng.choice(["Running", "Stopped"])
    if status == "Running":
        _state(run, mine, name, member, "stop")
    elif rng.random() < 0.7:
        _state(run, mine, name, member, "start")
    else:
        _delete(run, mine, name, member)


def _settle_async(run: Run, op: int, member: DaemonProcess, answer: Answer,
                  name: str | None = None) -> str:
    """Wait for ``answer``'s operation through ``member`` and record the outcome;
    returns it: ``ok``, ``fail`` or ``unknown``. With ``name``, a 404 to the request
    is recorded as a read of ``instance/NAME`` as absent (``Recorder.absent``)."""
    if answer.status == 202 and answer.doc.get("operation"):
        url = str(answer.doc["operation"])
        waited = request(member, "GET", f"{url}/wait?timeout={OPERATION_WAIT}",
                         timeout=OPERATION_WAIT + 10)
        meta = waited.doc.get("metadata") or {}
        if waited.status == 200 and meta.get("status") == "Success":
            run.settle(op, waited)
            return "ok"
        error = meta.get("err") or meta.get("status") or waited.doc.get("error", "")
        run.settle(op, Answer(0, {"error": f"operation: {error}"}))
        return "unknown"
    if answer.status == 202:
        answer = Answer(0, {"error": "no operation in a 202"})
    run.settle(op, answer, absent=None if name is None else f"instance/{name}")
    if 200 <= answer.status < 300:
        return "ok"
    return "fail" if 400 <= answer.status < 500 or answer.refused else "unknown"


def _create(run: Run, mine: Instances, seq: int, member: DaemonProcess) -> None:
    name, value = f"{PREFIX}{mine.client}-{seq}", f"{mine.client}-{seq}"
    op = run.invoke(mine.client, Kind.CREATE, f"instance/{name}", member, value=value)
    answer = request(member, "POST", "/1.0/instances",
                     {"name": name, "description": value, "type": "container",
                      "source": {"type": "image", "alias": IMAGE}})
    outcome = _settle_async(run, op, member, answer)
    if outcome != "fail":
        mine.believed[name] = "Stopped" if outcome == "ok" else "?"


def _state(run: Run, mine: Instances, name: str, member: DaemonProcess, action: str) -> None:
    kind, result = (Kind.START, "Running") if action == "start" else (Kind.STOP, "Stopped")
    op = run.invoke(mine.client, kind, f"status/{name}", member, value=result)
    body: dict[str, Any] = {"action": action, "timeout": 10}
    if action == "stop":
        body["force"] = True
    answer = request(member, "PUT", f"/1.0/instances/{name}/state", body)
    _follow(mine, name, _settle_async(run, op, member, answer, name), answer, result)


def _delete(run: Run, mine: Instances, name: str, member: DaemonProcess) -> None:
    op = run.invoke(mine.client, Kind.DELETE, f"instance/{name}", member)
    answer = request(member, "DELETE", f"/1.0/instances/{name}")
    _follow(mine, name, _settle_async(run, op, member, answer, name), answer, None)


def _follow(mine: Instances, name: str, outcome: str, answer: Answer,
            result: str | None) -> None:
    """What the client believes after an op on ``name`` that would leave ``result``
    (None: deleted). A 404 means the instance is gone (an unknown create that did not
    happen, or an unknown delete that did): the client forgets it."""
    if (outcome == "ok" and result is None) or answer.status == 404:
        mine.believed.pop(name, None)
    elif outcome == "ok" and result is not None:
        mine.believed[name] = result
    elif outcome == "unknown":
        mine.believed[name] = "?"


def final_instances(listing: list[dict[str, Any]]) -> dict[str, Value]:
    """``GET /1.0/instances?recursion=1`` -> the suite's keys for its own instances."""
    state: dict[str, Value] = {}
    for inst in listing:
        name = str(inst.get("name", ""))
        if name.startswith(PREFIX):
            state[f"instance/{name}"] = inst.get("description", "")
            state[f"status/{name}"] = inst.get("status")
    return state
