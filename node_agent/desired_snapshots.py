"""What the agent must do to an instance's snapshots and restores: desired against done.

The record holds the desired snapshot set (``Instance.snapshots``). Each entry says what
is still to be done to it on the host: taken (``ready`` False: asked, not yet taken),
deleted (``deleted``: asked, not yet removed), renamed (``local``: the name the host has
it under, "" once it is the entry's name). A restore is a counter, as a restart is: the
generation of the last restore asked (``Instance.restore_gen``) and its snapshot, carried
out once while the agent's report (``Observed.restore_gen``) is behind it. A second
restore asked before the agent came to the first replaces it.

``plan_snapshots`` reads only the record: every step is idempotent on the host (a take of
a snapshot the host has, a delete or a rename of one it lacks, does nothing), so a step
done before a crash and not reported is simply done again. The agent's report settles
each entry (``cluster/state/apply_snapshots.py``), which is what makes a second plan
empty: a take reported failed drops the entry (no record of a snapshot never taken), a
delete reported failed shows the snapshot again, a rename reported failed gives it its
old name back.

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
    snapshot: str  # the entry's name in the record
    old: str = ""  # the name the host has it under, when a rename is not yet reported
    # restore: the snapshot's removal is asked too, so a host without it under either
    # name restored it already (the delete comes after the restore, in a pass that died
    # before its report).
    gone_ok: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        """The names the host may have it under: a step done and not reported leaves it
        under the new one."""
        return tuple(dict.fromkeys(name for name in (self.old, self.snapshot) if name))


def _old(entry: SnapWant) -> str:
    return "" if entry.local in ("", entry.name) else entry.local


def plan_snapshots(entries: tuple[SnapWant, ...], restore_gen: int, restore_snap: str,
                   restored: int) -> tuple[SnapStep, ...]:
    """The steps, in the order asked, that carry out every pending change of the
    snapshot set and the restore asked at ``restore_gen`` (when ``restored``, the last
    restore reported, is behind it). A restore names its snapshot by the entry, so it
    finds it under either name (a restore, then a rename done, then a crash)."""
    steps = []
    by_name = {entry.name: entry for entry in entries}
    for entry in entries:
        if entry.deleted:  # under both names: a rename may be done and not reported
            steps.append(SnapStep("snapshot_delete", entry.generation, entry.name, _old(entry)))
        elif not entry.ready:
            steps.append(SnapStep("snapshot", entry.generation, entry.name))
        elif _old(entry):
            steps.append(SnapStep("snapshot_rename", entry.generation, entry.name,
                                  _old(entry)))
    if restore_gen > restored and restore_snap:
        entry = by_name.get(restore_snap, SnapWant(restore_snap, restore_gen))
        steps.append(SnapStep("restore", restore_gen, entry.name, _old(entry), entry.deleted))
    return tuple(sorted(steps, key=lambda step: step.generation))
