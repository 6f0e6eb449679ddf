"""LXD image templates: files rendered into an instance's rootfs on create/copy/start.

LXD renders them with pongo2 (Django-like). Images in the wild use only a few
expressions -- ``{{ instance.name }}``, ``{{ container.name }}``,
``{{ config_get("user.user-data", properties.default) }}`` and ``|default:"x"`` --
so those are evaluated; a variable that does not exist renders empty (as in
pongo2); anything else (tags, other functions) is left untouched.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ImageError
from .tarball import normalize

TRIGGERS = ("create", "copy", "start")

_EXPR = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_VAR = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*"
_STR = r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'"
_ARG = rf"(?:{_STR}|{_VAR})"
_VAR_RE = re.compile(rf"^(?P<var>{_VAR})(?:\s*\|\s*default:\s*(?P<default>{_ARG}))?$")
_CONFIG_GET_RE = re.compile(rf"^config_get\(\s*(?P<key>{_STR})\s*,\s*(?P<default>{_ARG})\s*\)$")
_MISSING = object()


def render(template_text: str, context: Mapping[str, Any]) -> str:
    """Render the supported pongo2 subset of ``template_text`` against ``context``."""

    def replace(match: re.Match[str]) -> str:
        value = _evaluate(match.group(1), context)
        return match.group(0) if value is _MISSING else _to_text(value)

    return _EXPR.sub(replace, template_text)


def _evaluate(expr: str, context: Mapping[str, Any]) -> object:
    """The value of ``expr``, or _MISSING when it is not a supported expression."""
    m = _VAR_RE.match(expr)
    if m:
        value = _lookup(context, m.group("var"))
        if m.group("default") is not None and not value:
            return _argument(m.group("default"), context)
        return value
    m = _CONFIG_GET_RE.match(expr)
    if m:
        config = context.get("config") or {}
        key = _argument(m.group("key"), context)
        if key in config:
            return config[key]
        return _argument(m.group("default"), context)
    return _MISSING


def _argument(arg: str, context: Mapping[str, Any]) -> object:
    if arg[:1] in ("'", '"'):
        return re.sub(r"\\(.)", r"\1", arg[1:-1])
    return _lookup(context, arg)


def _lookup(context: Mapping[str, Any], dotted: str) -> object:
    value: object = context
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _to_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def resolve_in_root(root: Path, path: str) -> Path:
    """Resolve ``path`` as the container would see it, chroot-style.

    Symlinks are followed with ``root`` as "/": an absolute target or ".." can never
    climb above ``root``, so the result always lies inside it. Components that do
    not exist yet are kept as they are.
    """
    pending = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise ImageError(f"too many levels of symbolic links in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        resolved.append(part)
    if not resolved:
        raise ImageError(f"template target {path!r} is the root directory")
    return root.joinpath(*resolved)


def write_in_root(root: Path, path: str, content: str, owner: int, create_only: bool) -> bool:
    """Write ``content`` to ``path`` inside ``root``; return False if skipped.

    New files and directories belong to ``owner`` (the container's root, shifted);
    an existing file keeps its owner and mode, as in LXD.
    """
    target = resolve_in_root(root, path)
    if create_only and os.path.lexists(target):
        return False
    rel_parts = target.relative_to(root).parts
    current = root
    for part in rel_parts[:-1]:
        current = current / part
        if not os.path.lexists(current):
            os.mkdir(current, 0o755)
            os.lchown(current, owner, owner)
        elif not stat.S_ISDIR(os.lstat(current).st_mode):
            where = current.relative_to(root)
            raise ImageError(f"cannot render {path}: /{where} is not a directory")
    existed = os.path.lexists(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(target, flags, 0o644)
    except OSError as exc:
        raise ImageError(f"cannot render template into {path}: {exc}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(content)
        if not existed:
            os.fchown(out.fileno(), owner, owner)
            os.fchmod(out.fileno(), 0o644)
    return True


def apply_templates(templates_dir: Path, templates: Mapping[str, Any], rootfs: Path,
                    trigger: str, context: Mapping[str, Any], owner: int) -> list[str]:
    """Render every template whose ``when`` lists ``trigger``; return the paths written."""
    if trigger not in TRIGGERS:
        raise ImageError(f"unknown template trigger {trigger!r}")
    written: list[str] = []
    for path, spec in sorted(templates.items()):
        if not isinstance(spec, Mapping) or trigger not in (spec.get("when") or []):
            continue
        source = templates_dir / normalize(str(spec.get("template", "")))
        if not source.is_file() or source.is_symlink():
            raise ImageError(f"template {spec.get('template')!r} for {path} is missing")
        ctx = {**context, "path": path, "trigger": trigger,
               "properties": dict(spec.get("properties") or {})}
        text = render(source.read_text(encoding="utf-8", errors="replace"), ctx)
        if write_in_root(rootfs, str(path), text, owner, bool(spec.get("create_only"))):
            written.append(str(path))
    return written
