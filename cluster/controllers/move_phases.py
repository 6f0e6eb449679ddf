"""The phases of a move intent, and what a controller does with one it finds.

A move (``kind`` ``move`` or ``live_move``) is driven by the leader's controller through
these phases, each committed (``intent.advance``) *before* the side effect it names::

    new -> precopy -> stopping -> begun -> ending -> switched -> done
                   (live: new -> begun -> sending -> ending -> switched)

``instance.move_end`` (the switch: the instance lives on the target) commits between
``ending`` and ``switched``, so a leader that dies there leaves ``ending`` with the
location already switched. That is why the decision looks at the instance, not only at
the phase: once the instance lives on the target the move can only roll forward (start
it there, drop the source's copy); before that, whatever a dead leader began is undone
(drop what the target received, free its reservation, run the instance on its source
again if it ran). Cancelling (``intent.cancel``) is refused from ``ending`` on.
"""

from __future__ import annotations

from typing import Literal

COLD_PHASES = ("new", "precopy", "stopping", "begun", "ending", "switched")
LIVE_PHASES = ("new", "begun", "sending", "ending", "switched")
# The error of a move a new leader found half-way and undid (evacuations retry it).
INTERRUPTED = "interrupted (the leader changed)"
Decision = Literal["run", "undo", "forward", "none"]


def switched(location: str, moving_to: str, source: str, target: str) -> bool:
    """Whether ``move_end`` has committed: the instance lives on the target now."""
    return location == target and location != source and not moving_to


def decide(phase: str, *, cancel: bool, finished: bool, location: str, moving_to: str,
           source: str, target: str, resumed: bool) -> Decision:
    """What to do with a move intent in ``phase``.

    ``resumed``: this controller did not take the intent's earlier steps itself (a new
    leader, or a controller that failed half-way): nothing it did not do is trusted.
    - finished: nothing;
    - the instance already lives on the target (whatever the phase): roll forward;
    - ``switched`` with the instance elsewhere (it was moved since): nothing to roll,
      finish forward as well (the forward steps check the instance before acting);
    - cancelled, or resumed past ``new``: undo;
    - ``new``: run from the start.
    """
    if finished:
        return "none"
    if switched(location, moving_to, source, target) or phase == "switched":
        return "forward"
    if cancel or (resumed and phase != "new"):
        return "undo"
    return "run" if phase == "new" else "undo"
