"""The chaos suite's nemesis: which faults, in what order, each undone before the next.

Every fault is a ``devtools.nemesis`` / ``devtools.nemesis_disk`` call, so what a run did
can be replayed by hand with ``corral dev-cluster``. Kinds are drawn in shuffled rounds
(each kind once per round), so even the short profile meets every kind once it has
injected ``len(KINDS)`` faults, and the long one each kind several times.

- ``kill``: kill -9 of a follower or the leader, started again after 1-3 s.
- ``pause``: SIGSTOP for 5-10 s, then SIGCONT.
- ``isolate`` / ``cut``: the leader / a follower cut off both ways for 3-6 s.
- ``one-way``: the rest cannot reach the leader (or a follower), its packets still leave.
- ``minority`` / ``majority``: a minority (with the leader) or a majority (with the
  leader, so the minority left behind has no leader) cut off.
- ``corrupt``: a stopped member's journal or snapshot flipped or truncated (see
  ``nemesis_disk.corrupt``), then started again: it must rebuild, not serve damage.
  A snapshot exists only once a member has compacted its log (after 60 s of uptime,
  or 20,000 entries): a member that has one is chosen, else the journal is damaged.
- ``disk``: a loop file system under one member's Raft directory (attached once, the
  member restarted on it), filled for 3-6 s, then freed; detached at the end
  (``restore``).
- ``clock``: a member restarted with its clock 30 s ahead for 5-10 s, then restarted
  with the right time.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devtools import nemesis, nemesis_disk

KINDS = ("kill-follower", "kill-leader", "pause", "isolate", "cut", "one-way-leader",
         "one-way-follower", "minority", "majority", "corrupt-journal-flip",
         "corrupt-journal-truncate", "corrupt-snapshot", "disk", "clock")
CLOCK_OFFSET = 30.0


@dataclass
class Nemesis:
    """Injects faults into the dev cluster in ``directory``; ``leader`` names the current
    leader (or None). ``done`` counts injected faults per kind."""

    directory: Path
    names: list[str]
    leader: Callable[[], str | None]
    rng: random.Random
    done: dict[str, int] = field(default_factory=dict)
    disks: set[str] = field(default_factory=set)
    _round: list[str] = field(default_factory=list)

    def next_kind(self) -> str:
        """The next kind of the current shuffled round."""
        if not self._round:
            self._round = list(KINDS)
            self.rng.shuffle(self._round)
        return self._round.pop()

    def inject(self, kind: str) -> str:
        """Inject one fault of ``kind`` and undo it; returns what was done. Raises
        NemesisError when it could not be injected (then nothing is left behind)."""
        description = getattr(self, "_" + kind.split("-")[0])(kind)
        self.done[kind] = self.done.get(kind, 0) + 1
        return str(description)

    # ---- helpers --------------------------------------------------------------------

    def _follower(self) -> str:
        leader = self.leader()
        return self.rng.choice([n for n in self.names if n != leader] or self.names)

    def _target(self, kind: str) -> str:
        if kind.endswith("leader"):
            return self.leader() or self.rng.choice(self.names)
        if kind.endswith("follower"):
            return self._follower()
        return self.rng.choice(self.names)

    def _ensure_started(self, name: str, clock_offset: float | None = None) -> None:
        if not nemesis.running(self.directory, name):
            nemesis.start(self.directory, name, clock_offset=clock_offset)

    def _hold(self, low: float, high: float) -> None:
        time.sleep(self.rng.uniform(low, high))

    # ---- the kinds ------------------------------------------------------------------

    def _kill(self, kind: str) -> str:
        name = self._target(kind)
        nemesis.kill(self.directory, name, "KILL")
        try:
            self._hold(1.0, 3.0)
        finally:
            self._ensure_started(name)
        return f"kill -9 {name} ({kind.removeprefix('kill-')}), started again"

    def _pause(self, kind: str) -> str:
        name = self.rng.choice(self.names)
        nemesis.kill(self.directory, name, "STOP")
        try:
            self._hold(5.0, 10.0)
        finally:
            nemesis.kill(self.directory, name, "CONT")
        return f"SIGSTOP {name} ({'leader' if name == self.leader() else 'member'}), CONT"

    def _cut_off(self, names: list[str], one_way: bool, what: str) -> str:
        nemesis.partition(self.directory, names, one_way)
        try:
            self._hold(3.0, 6.0)
        finally:
            nemesis.heal(self.directory)
        return f"{what} {','.join(names)}{' (one way)' if one_way else ''}, healed"

    def _isolate(self, kind: str) -> str:
        return self._cut_off([self._target("leader")], False, "leader isolated:")

    def _cut(self, kind: str) -> str:
        return self._cut_off([self._follower()], False, "follower cut off:")

    def _one(self, kind: str) -> str:
        return self._cut_off([self._target(kind)], True, f"{kind.split('-')[-1]} cut off:")

    def _minority(self, kind: str) -> str:
        names = nemesis.side(self.names, "minority", self.leader(), self.rng)
        return self._cut_off(names, False, "minority with the leader cut off:")

    def _majority(self, kind: str) -> str:
        names = nemesis.side(self.names, "majority", self.leader(), self.rng)
        return self._cut_off(names, False, "majority with the leader cut off:")

    def _corrupt(self, kind: str) -> str:
        file = "snapshot" if kind == "corrupt-snapshot" else "journal"
        having = [n for n in self.names if nemesis_disk.has_file(self.directory, n, file)]
        name = self.rng.choice(having or self.names)
        how = kind.split("-")[-1] if file == "journal" else self.rng.choice(nemesis_disk.HOWS)
        nemesis.kill(self.directory, name, "KILL")
        try:
            try:
                done = nemesis_disk.corrupt(self.directory, name, file, how)
            except nemesis.NemesisError:  # no snapshot yet: none compacted
                if file != "snapshot":
                    raise
                done = nemesis_disk.corrupt(self.directory, name, "journal", how)
                done += " (no snapshot yet)"
            self._hold(0.5, 2.0)
        finally:
            self._ensure_started(name)
        return f"kill -9 {name}, {done}, started again"

    def _disk(self, kind: str) -> str:
        name = next(iter(self.disks), None) or self.rng.choice(self.names)
        if name not in self.disks:
            nemesis.kill(self.directory, name, "KILL")
            try:
                nemesis_disk.attach_disk(self.directory, name)
                self.disks.add(name)
            finally:
                self._ensure_started(name)
        filled = nemesis_disk.fill_disk(self.directory, name)
        try:
            self._hold(3.0, 6.0)
        finally:
            nemesis_disk.free_disk(self.directory, name)
        return f"{name}'s Raft disk full ({filled} bytes of filler), freed"

    def _clock(self, kind: str) -> str:
        name = self.rng.choice(self.names)
        nemesis.kill(self.directory, name, "KILL")
        try:
            nemesis.start(self.directory, name, clock_offset=CLOCK_OFFSET)
            self._hold(5.0, 10.0)
            nemesis.kill(self.directory, name, "KILL")
        finally:
            self._ensure_started(name)
        return f"{name} restarted with its clock {CLOCK_OFFSET:+g} s off, then without"

    # ---- the end --------------------------------------------------------------------

    def restore(self) -> list[str]:
        """Undo everything a fault may have left (at the end, or after a failure):
        partitions healed, paused members continued, disks detached with their
        contents copied back, every member running. Returns what it did."""
        done = []
        with contextlib.suppress(nemesis.NemesisError):
            if nemesis.heal(self.directory):
                done.append("healed")
        for name in self.names:
            if nemesis.running(self.directory, name):
                nemesis.kill(self.directory, name, "CONT")
        for name in sorted(self.disks):
            with contextlib.suppress(nemesis.NemesisError):
                nemesis.kill(self.directory, name, "KILL")
            nemesis_disk.detach_disk(self.directory, name)
            self.disks.discard(name)
            done.append(f"{name}'s disk detached")
        for name in self.names:
            if not nemesis.running(self.directory, name):
                nemesis.start(self.directory, name)
                done.append(f"{name} started")
        return done
