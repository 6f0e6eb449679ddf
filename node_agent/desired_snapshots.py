"""What the agent must do to an instance's snapshots and restores: desired against done.

The record holds the desired snapshot set (``Instance.snapshots``). Each entry says what
is still to be done to it on the host: taken (``ready`` False: asked, not yet taken),
deleted (``deleted``: asked, not yet removed), renamed (``local``: the name the host has
it under, "" once it is the entry's name). A restore is a counter, as a restart is: the
generation of the last restore asked (``Instance.restore_gen``) and its snapshot, carried
out once while the agent's report is behind it.

``plan_snapshots`` reads only the record: every step is idempotent on the host (a take of
a snapshot the host has, a delete or a rename of one it lacks, does nothing), so a step
done before a crash and not reported is simply done again. The agent's report settles
each entry (``apply_instances``), which is what makes a second plan empty.

Snapshot renames need identity: an entry keeps the name the host has it under
(``local``), as an instance keeps its host name, so a -> b -> c before the agent came to
it is one rename a -> c, and a rename is never mistaken for a delete and a take.

Steps come in the order they were asked (their generations): a snapshot taken after a
restore holds the restored files, one taken before holds the files before it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SnapWant:
    """One entry of the desired snapshot set."""

    name: str
    generation: int  # of its last change (take, rename, delete): a failure is reported there
    ready: bool = True  # taken and reported
    deleted: bool = False
    local: str = ""  # the name the host has it under ("" = ``name``)


@dataclass(frozen=True)
class SnapStep:
    kind: str  # snapshot|snapshot_delete|snapshot_rename|restore (``actions.perform``)
    generation: int
    snapshot: str  # take, delete, restore: the snapshot; rename: the new name
    old: str = ""  # rename: the name the host has it under


def plan_snapshots(entries: tuple[SnapWant, ...], restore_gen: int, restore_snap: str,
                   restored: int) -> tuple[SnapStep, ...]:
    """The steps, in the order asked, that carry out every pending change of the
    snapshot set and the restore asked at ``restore_gen`` (when ``restored``, the last
    restore reported, is behind it)."""
    steps = []
    for entry in entries:
        local = entry.local or entry.name
        if entry.deleted:
            steps.append(SnapStep("snapshot_delete", entry.generation, local))
            if local != entry.name:  # renamed, then deleted before its report
                steps.append(SnapStep("snapshot_delete", entry.generation, entry.name))
        elif not entry.ready:
            steps.append(SnapStep("snapshot", entry.generation, entry.name))
        elif local != entry.name:
            steps.append(SnapStep("snapshot_rename", entry.generation, entry.name, local))
    if restore_gen > restored and restore_snap:
        steps.append(SnapStep("restore", restore_gen, restore_snap))
    return tuple(sorted(steps, key=lambda step: step.generation))
