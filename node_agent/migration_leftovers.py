"""What ends the half of a live migration that a VM's QEMU still holds on this member
after the daemon that followed it died (kill -9, a crash): decided from the replicated
state alone, once the move's intent has finished.

A live move's controller (``cluster/controllers/live_moves.py``) ends both halves through
the members' daemons; a call it makes while a member's daemon is down fails, is logged,
and the intent finishes all the same. QEMU does not end the half by itself: a source
stopped at the switch-over waits for ever for ``migrate-continue``, a target waits paused
for ``cont`` (or exits when the source gives up, leaving the VM's files: a second copy
that refuses the next move here), and the source's NBD node and mirror job refuse the
next migration. The
drivers mark each half while it is open (``drivers/qemu/migration``: ``outgoing_left``,
``incoming_left``); the agent looks for marks when it starts and on every resync::

    side      the instance lives here            lives elsewhere (or is gone)
    outgoing  resume_source: the move was undone  drop_source: the move was done
    incoming  finish_incoming: the move was done  abort_incoming: it was undone

Nothing is done while an intent holds the instance: the half may be the one a living
controller follows, and which way it ends is that controller's to say (and to repeat).
"""

from __future__ import annotations

from typing import Literal

Side = Literal["outgoing", "incoming"]
EndStep = Literal["resume_source", "drop_source", "finish_incoming", "abort_incoming", ""]


def end_step(side: Side, *, lives_here: bool, held: bool) -> EndStep:
    """The driver step that ends a ``side`` half left on this member ("" to wait).

    ``lives_here``: the instance of that name is located on this member; ``held``: an
    unfinished intent holds it (``Instance.intent``)."""
    if held:
        return ""
    if side == "outgoing":
        return "resume_source" if lives_here else "drop_source"
    return "finish_incoming" if lives_here else "abort_incoming"
