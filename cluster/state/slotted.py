"""Pickling for the replicated records that use ``__slots__``, compatible both ways.

A record of which there are millions (an instance with its pending action and observed
status, the kept result of each placement) costs far less without a ``__dict__``: at a
million instances the three per-instance dicts were about 900 bytes of the 2 KiB each
instance cost in every replica (issue 13). ``@dataclass(slots=True)`` drops them, but a
slotted object pickles as ``(None, {slot: value})`` and cannot load the plain ``dict``
that snapshots written before held, nor fall back to a class default for a field that
an older snapshot lacks (a slotted class keeps no defaults as class attributes).

``@slotted`` gives such a class a ``__getstate__`` that returns the same ``dict`` of
fields a plain dataclass pickles (so old code can load new snapshots too) and a
``__setstate__`` that takes that dict, the slotted form, or an older dict with fields
missing (filled from the field's default) or unknown (dropped).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_MISSING = dataclasses.MISSING


def slotted(cls: type[T]) -> type[T]:
    """Add the compatible ``__getstate__`` and ``__setstate__`` to a slotted dataclass."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = tuple(f.name for f in fields)
    known = frozenset(names)
    defaults: dict[str, Callable[[], Any]] = {}
    for f in fields:
        if f.default is not _MISSING:
            defaults[f.name] = _constant(f.default)
        elif f.default_factory is not _MISSING:
            defaults[f.name] = f.default_factory
    setter = object.__setattr__  # also for frozen classes

    def __getstate__(self: Any) -> dict[str, Any]:  # noqa: N807
        return {name: getattr(self, name) for name in names}

    def __setstate__(self: Any, data: Any) -> None:  # noqa: N807
        if isinstance(data, tuple):  # (dict, slots): the default form of a slotted object
            first, slots = data
            data = {**(first or {}), **(slots or {})}
        if data.keys() != known:
            data = {name: data[name] if name in data else _default(cls, defaults, name)
                    for name in names}
        for name, value in data.items():
            setter(self, name, value)

    setattr(cls, "__getstate__", __getstate__)  # noqa: B010 - mypy: no method-assign
    setattr(cls, "__setstate__", __setstate__)  # noqa: B010
    return cls


def _constant(value: Any) -> Callable[[], Any]:
    """A factory of a field's immutable default (dataclasses refuses mutable ones)."""
    return lambda: value


def _default(cls: type, defaults: dict[str, Callable[[], Any]], name: str) -> Any:
    try:
        return defaults[name]()
    except KeyError:
        raise TypeError(f"a pickled {cls.__qualname__} lacks {name!r}, "
                        "which has no default") from None
