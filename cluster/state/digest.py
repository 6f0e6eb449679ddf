"""Digests of the replicated state, taken at a marker in the Raft log (DESIGN §6.6).

``corral cluster check`` must compare every replica *at the same log position*, but
members apply at different speeds and heartbeats commit every few seconds, so "ask
everyone for their current digest and retry until the indexes match" may never settle
under load, and reading an index next to a state races with apply. Instead the checker
commits one ``replica.mark`` command: every replica takes its digest while it applies
that very command (in Raft's tick thread, under the replica lock), so each digest is of
the state after exactly the same log prefix, whatever else is being written. A member
that has not applied the marker yet is *behind*, which the checker tells apart from one
that *differs*. The apply of the marker itself changes nothing but the remembered
command ids, like every command.

The digest is BLAKE2b over a canonical encoding of the ``State``: type-tagged and
length-prefixed, dataclass fields in declaration order, dicts in insertion order (the
order is replicated state: API listings and the eviction of ``recent`` follow it),
sets sorted. Pickle is not used: its memo makes the bytes depend on which strings
happen to be the same object, which differs between a replica that applied a command
and one that unpickled it. ``reserved`` and ``grouped`` are left out: they are caches
derived from the instances, and a replica may hold them recomputed or not yet
(``None``). The cost is linear in the state, about 55 µs per instance on this 2-core
machine (1.1 s at 20k instances). For a few thousand instances it is paid in the tick thread,
under the replica lock (a few ms for the dev and chaos clusters); past
``forked_digest.FORK_FROM_INSTANCES`` a child forked at the marker digests the state as
it was then, off the Raft thread (forked_digest.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.state import forked_digest
from cluster.state.commands import Command, Result, ok
from cluster.state.forked_digest import ForkedDigest
from cluster.state.model import State

MARK = "replica.mark"
DERIVED_FIELDS = frozenset({"reserved", "grouped"})
KEPT_MARKS = 32  # concurrent checks each need their marker kept until it is read
FLUSH_PIECES = 65_536  # encoded pieces kept before they are fed to the hash


@dataclass(frozen=True)
class Mark:
    """One replica's digest at a marker: the Raft index of the marker's log entry."""

    mark: str
    index: int
    digest: str


def state_digest(state: State) -> str:
    """Hex BLAKE2b of ``state`` without its derived caches; equal states give equal
    digests in any process (no hash seed, object identity or pickle memo involved)."""
    out = _Sink(hashlib.blake2b(digest_size=32))
    out.append(b"State")
    for f in dataclasses.fields(state):
        if f.name not in DERIVED_FIELDS:
            _encode(f.name, out)
            _encode(getattr(state, f.name), out)
    out.flush()
    return out.hasher.hexdigest()


class _Sink(list[bytes]):
    """The encoding's pieces, fed to the hash every ``FLUSH_PIECES`` (the BLAKE2b of
    the pieces hashed in turn is that of their concatenation). Joined at the end, the
    encoding of a million instances took about 8 GiB, and a digest child of that size
    was killed by the OOM killer (issue 13)."""

    def __init__(self, hasher: Any) -> None:
        super().__init__()
        self.hasher = hasher

    def flush(self) -> None:
        self.hasher.update(b"".join(self))
        self.clear()


def _encode(value: Any, out: list[bytes]) -> None:
    """Append ``value``'s canonical bytes to ``out`` (see the module docstring)."""
    encoder = _ENCODERS.get(type(value))
    if encoder is not None:
        encoder(value, out)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _encode_dataclass(value, out)
    elif isinstance(value, dict):
        _encode_dict(value, out)
    elif isinstance(value, (list, tuple)):
        _encode_list(value, out)
    else:  # not seen in State; pickled alone, so no memo is shared with anything else
        _blob(b"P", pickle.dumps(value, protocol=4), out)


def _blob(tag: bytes, data: bytes, out: list[bytes]) -> None:
    out.append(tag + struct.pack("<Q", len(data)) + data)


def _encode_str(value: str, out: list[bytes]) -> None:
    _blob(b"s", value.encode("utf-8", "surrogatepass"), out)


def _encode_int(value: int, out: list[bytes]) -> None:
    _blob(b"i", str(value).encode(), out)


def _encode_float(value: float, out: list[bytes]) -> None:
    out.append(b"f" + struct.pack("<d", value))


def _encode_dict(value: dict[Any, Any], out: list[bytes]) -> None:
    out.append(b"{" + struct.pack("<Q", len(value)))
    for key, item in value.items():
        _encode(key, out)
        _encode(item, out)
        if len(out) >= FLUSH_PIECES and isinstance(out, _Sink):
            out.flush()


def _encode_list(value: list[Any] | tuple[Any, ...], out: list[bytes]) -> None:
    out.append((b"[" if isinstance(value, list) else b"(") + struct.pack("<Q", len(value)))
    for item in value:
        _encode(item, out)


def _encode_set(value: set[Any] | frozenset[Any], out: list[bytes]) -> None:
    items = []
    for item in value:
        encoded: list[bytes] = []
        _encode(item, encoded)
        items.append(b"".join(encoded))
    out.append(b"<" + struct.pack("<Q", len(items)))
    out.extend(sorted(items))


def _encode_dataclass(value: Any, out: list[bytes]) -> None:
    _blob(b"D", type(value).__qualname__.encode(), out)
    for f in dataclasses.fields(value):
        _encode(getattr(value, f.name), out)


_ENCODERS: dict[type, Callable[[Any, list[bytes]], None]] = {
    str: _encode_str,
    int: _encode_int,
    float: _encode_float,
    bool: lambda value, out: out.append(b"T" if value else b"F"),
    type(None): lambda value, out: out.append(b"N"),
    bytes: lambda value, out: _blob(b"b", value, out),
    dict: _encode_dict,
    OrderedDict: _encode_dict,
    list: _encode_list,
    tuple: _encode_list,
    set: _encode_set,
    frozenset: _encode_set,
}


class MarkBook:
    """The digests this replica took at the last ``KEPT_MARKS`` markers. Not replicated
    state: it lives beside the replica and is used only under the replica's lock.
    A large state is digested by a forked child (forked_digest.py): ``get`` returns
    None until that child is done, as for a marker not applied yet."""

    def __init__(self) -> None:
        self._marks: OrderedDict[str, Mark | tuple[int, ForkedDigest]] = OrderedDict()

    def record(self, mark: str, index: int, state: State) -> None:
        """Digest ``state`` as of the marker ``mark`` at log ``index``; never raises
        (it runs inside apply, where an exception would block the log)."""
        try:
            if len(state.instances) >= forked_digest.FORK_FROM_INSTANCES:
                self._marks[mark] = (index, ForkedDigest(state, state_digest))
            else:
                self._marks[mark] = Mark(mark, index, state_digest(state))
        except Exception as exc:  # noqa: BLE001 - see the docstring
            self._marks[mark] = Mark(mark, index, f"error: {exc!r}")
        while len(self._marks) > KEPT_MARKS:
            _, dropped = self._marks.popitem(last=False)
            if isinstance(dropped, tuple):
                dropped[1].abandon()

    def get(self, mark: str) -> Mark | None:
        found = self._marks.get(mark)
        if not isinstance(found, tuple):
            return found
        index, child = found
        digest = child.poll()
        if digest is None:
            return None
        self._marks[mark] = done = Mark(mark, index, digest)
        return done


def apply_mark(state: State, cmd: Command) -> Result:
    """The marker changes no record: the replica digests the state around it."""
    return ok({"mark": cmd.args.get("mark", "")})


HANDLERS = {MARK: apply_mark}
