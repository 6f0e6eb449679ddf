"""An image's metadata.yaml: parsed without YAML aliases, checked for LXD's shape.

Aliases are refused outright. A few hundred bytes of nested aliases (``*a``) expand
to megabytes, and a few more levels to gigabytes, as soon as the parsed value is
written out (image.json, the Raft state, ``GET /1.0/images/<fp>``); LXD's own images
never use them.

LXD decodes the file into a typed struct (``api.ImageMetadata``), so this checks the
same shape: ``properties`` and each template's ``properties`` map strings to strings,
``when`` is a list of strings, ``create_only`` a boolean. Like go-yaml, a scalar is
taken as its text (``release: 22.04`` is "22.04", ``lts: true`` is "true", an empty
value is ""); a list or mapping where a string belongs is refused.
"""

from __future__ import annotations

import datetime
from typing import Any

import yaml
from yaml.nodes import Node

from .errors import ImageError

_SCALARS = (str, int, float, datetime.date)  # bool is an int; datetime is a date


class _NoAliasLoader(yaml.SafeLoader):
    """The safe loader, refusing an alias where it meets one: nothing is expanded."""

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases are not allowed in image metadata",
                self.peek_event().start_mark)
        return super().compose_node(parent, index)


def parse_metadata(raw: bytes, source: str) -> dict[str, Any]:
    """Parse metadata.yaml and check the fields LXD requires.

    Returns the mapping with ``architecture`` as text and ``properties`` and
    ``templates`` normalised to LXD's shape (unknown template keys dropped). Raises
    ImageError, naming ``source`` and the offending key, for aliases, invalid YAML and
    anything LXD would not decode.
    """
    meta = _load(raw, source)
    if not isinstance(meta, dict):
        raise ImageError(f"metadata.yaml in {source} is not a mapping")
    for key in ("architecture", "creation_date"):
        if key not in meta:
            raise ImageError(f"metadata.yaml in {source} lacks {key!r}")
    try:
        int(meta["creation_date"])
        int(meta.get("expiry_date") or 0)
    except (TypeError, ValueError) as exc:
        raise ImageError(f"metadata.yaml in {source} has a non-numeric date") from exc
    try:
        meta["architecture"] = _text(meta["architecture"], "architecture")
        meta["properties"] = _string_map(meta.get("properties"), "properties")
        meta["templates"] = _templates(meta.get("templates"))
    except ImageError as exc:
        raise ImageError(f"metadata.yaml in {source}: {exc}") from None
    return meta


def _load(raw: bytes, source: str) -> Any:
    try:
        return yaml.load(raw, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ImageError(f"invalid metadata.yaml in {source}: {exc}") from exc
    except RecursionError as exc:
        raise ImageError(f"metadata.yaml in {source} is nested too deeply") from exc


def _text(value: object, where: str) -> str:
    """A scalar as go-yaml would put it in a string field; ImageError for anything else."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _SCALARS):
        return str(value)
    raise ImageError(f"{where} must be a string, not a {_kind(value)}")


def _string_map(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ImageError(f"{where} is not a mapping of strings")
    return {_text(k, f"a key of {where}"): _text(v, _at(where, k)) for k, v in value.items()}


def _templates(value: object) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ImageError("templates is not a mapping")
    return {_text(path, "a key of templates"): _template(spec, _at("templates", path))
            for path, spec in value.items()}


def _template(spec: object, where: str) -> dict[str, Any]:
    """One template in LXD's fields: when, create_only, template, properties."""
    if not isinstance(spec, dict):
        raise ImageError(f"{where} is not a mapping")
    when = spec.get("when")
    if when is not None and not isinstance(when, list):
        raise ImageError(f"{where}.when must be a list of strings, not a {_kind(when)}")
    create_only = spec.get("create_only")
    if create_only is not None and not isinstance(create_only, bool):
        raise ImageError(f"{where}.create_only must be true or false")
    return {"when": [_text(w, f"{where}.when") for w in when or []],
            "create_only": bool(create_only),
            "template": _text(spec.get("template"), f"{where}.template"),
            "properties": _string_map(spec.get("properties"), f"{where}.properties")}


def _at(where: str, key: object) -> str:
    """``where.key`` for a message, the key cut short: it comes from the image."""
    return f"{where}.{str(key)[:100]}"


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return type(value).__name__
