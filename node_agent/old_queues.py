"""A queue of one-shot actions from a snapshot of before, read as desired state.

Replicas and Raft snapshots written before every instance change became desired state
hold ``Instance.pending``: numbered ``Action``s the agent used to replay. A member that
loads such a snapshot must still carry them out, once, without a replay path of its own:
these pure functions fold the queue into the desired record the agent converges on (a
queued create is an instance not yet created, a queued rename a host name behind the
record's, and so on), leaving only queued power actions, which the agent runs once.
"""

from __future__ import annotations

from dataclasses import replace as dc_replace

from cluster.state.model import Action
from node_agent.desired import Record, Reported
from node_agent.desired_snapshots import SnapWant


def desired_of_queue(record: Record, reported: Reported, queue: list[Action]
                      ) -> tuple[Record, Reported, list[Action]]:
    """A queue from a snapshot of before, read as desired state: a queued create is an
    instance not yet created, a queued rename a host name behind the record's, a queued
    update a spec revision behind, a queued delete is ``power == "Deleted"`` already. What
    is left (power actions, snapshot changes, restore) goes on to
    ``snapshots_of_queue``."""
    left = []
    for act in queue:
        if act.kind == "create":
            reported = dc_replace(reported, created=False)
        elif act.kind == "rename":
            if not reported.name:
                reported = dc_replace(reported, name=str(act.args.get("old", "")))
            record = dc_replace(record, name_gen=max(record.name_gen, act.generation))
        elif act.kind == "update":
            record = dc_replace(record, spec_gen=max(record.spec_gen, act.generation))
        elif act.kind != "delete":
            left.append(act)
    if reported.name == record.name:
        reported = dc_replace(reported, name="")
    return record, reported, left


def snapshots_of_queue(entries: dict[str, SnapWant], restore: tuple[int, str],
                        queue: list[Action]
                        ) -> tuple[dict[str, SnapWant], tuple[int, str], list[Action]]:
    """Queued snapshot changes and restores from a snapshot of before, read as desired
    state: a queued take is an entry not yet taken (it is not ``ready`` already), a
    queued delete an entry to delete (then hidden by ``ready`` False), a queued rename
    an entry the host has under its first name, a queued restore the last restore
    asked (following the renames after it). What is left (power actions) runs once."""
    left: list[Action] = []
    hosts: dict[str, str] = {}  # the record's name -> the name the host has it under
    for act in queue:
        name, gen = str(act.args.get("snapshot", "")), act.generation
        if act.kind == "snapshot" and name in entries:
            entries[name] = dc_replace(entries[name], generation=gen, ready=False)
        elif act.kind == "snapshot_delete" and name in entries:
            entries[name] = dc_replace(entries[name], generation=gen, deleted=True)
        elif act.kind == "snapshot_rename":
            old, new = str(act.args.get("old", "")), str(act.args.get("new", ""))
            hosts[new] = hosts.pop(old, old)
            if new in entries:
                entries[new] = dc_replace(entries[new], generation=gen)
            if restore[1] == old:
                restore = (restore[0], new)
        elif act.kind == "restore":
            restore = (gen, name)
        else:
            left.append(act)
    for new, host in hosts.items():
        if new in entries and host != new:
            entries[new] = dc_replace(entries[new], local=host)
    return entries, restore, left
