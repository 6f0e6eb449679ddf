"""Settle the agent's report on an instance's desired snapshot set and restore.

The record is desired state (node_agent/desired_snapshots.py): entries to take, delete or
rename, and the last restore asked. The agent's ``instance.observed`` lists the snapshot
steps it carried out (``snapshots``) and the one that failed (``snapshot_failed``), each as
``[kind, generation, snapshot, old]`` (``SnapStep``). Each settles its entry, so the next
plan has nothing left to do for it, and a failure settles as LXD leaves a failed
operation: a take that failed leaves no record of a snapshot never taken, a delete that
failed shows the snapshot again, a rename that failed gives it back its old name (which
``snapshot_name_taken`` keeps free meanwhile). Pure, and it never raises: a malformed
step is ignored.
"""

from __future__ import annotations

from cluster.state.model import Instance, Snapshot

Wire = tuple[str, int, str, str]


def snapshot_name_taken(inst: Instance, name: object) -> bool:
    """Whether ``name`` is an entry's, or the name the host still has an entry under
    (its rename not yet reported: a failed rename gives that name back)."""
    return name in inst.snapshots or any(s.local == name for s in inst.snapshots.values())


def settle_snapshots(inst: Instance, done: object, failed: object) -> None:
    """Apply the reported snapshot steps ``done`` and the ``failed`` one to the record."""
    for kind, generation, name, old in _steps(done):
        _done(inst, kind, generation, name, old)
    for kind, generation, name, old in _steps([failed] if failed else []):
        _failed(inst, kind, generation, name, old)


def _steps(value: object) -> list[Wire]:
    if not isinstance(value, list | tuple):
        return []
    steps = []
    for step in value:
        if (isinstance(step, list | tuple) and len(step) == 4 and isinstance(step[1], int)
                and all(isinstance(step[i], str) for i in (0, 2, 3))):
            steps.append((step[0], step[1], step[2], step[3]))
    return steps


def _entry(inst: Instance, name: str, old: str) -> Snapshot | None:
    """The entry a step was planned for: by the host name its rename started from (the
    entry may have been renamed again since), else by its name."""
    if old:
        for snap in inst.snapshots.values():
            if snap.local == old:
                return snap
    return inst.snapshots.get(name)


def _done(inst: Instance, kind: str, generation: int, name: str, old: str) -> None:
    snap = _entry(inst, name, old)
    if kind == "restore":
        inst.observed.restore_gen = max(inst.observed.restore_gen, generation)
    elif snap is None:
        return
    elif kind == "snapshot" and not snap.deleted:
        snap.ready = True
    elif kind == "snapshot_delete" and (snap.deleted or not snap.ready):
        # (not ready: a delete queued in a snapshot from before hid the entry that way)
        del inst.snapshots[snap.name]
    elif kind == "snapshot_rename":
        snap.local = "" if name == snap.name else name  # the host has it under ``name``


def _failed(inst: Instance, kind: str, generation: int, name: str, old: str) -> None:
    snap = _entry(inst, name, old)
    if kind == "restore":
        inst.observed.restore_gen = max(inst.observed.restore_gen, generation)
    elif snap is None:
        return
    elif kind == "snapshot" and not snap.ready:
        del inst.snapshots[snap.name]
    elif kind == "snapshot_delete":
        snap.deleted, snap.ready = False, True
    elif kind == "snapshot_rename" and old and old not in inst.snapshots:
        del inst.snapshots[snap.name]
        if inst.restore_snap == snap.name:
            inst.restore_snap = old
        snap.name, snap.local = old, ""
        inst.snapshots[old] = snap
