"""``corral file push|pull|delete``: ``/1.0/instances/NAME/files?path=...`` as ``lxc file`` uses it.

Push is a POST whose body is the file and whose ``X-LXD-uid``, ``X-LXD-gid``,
``X-LXD-mode`` (octal, ``0644``) and ``X-LXD-type`` (``file``, ``directory``,
``symlink``) headers say what to create; pull is a GET answering the content with the
same headers (a directory answers a JSON list of its entries).
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import stat
import sys
import time
from typing import Any, BinaryIO
from urllib.parse import quote

from corral_cli import format as fmt
from corral_cli.client import Client, CliError, UsageError, error_from
from corral_cli.progress import CHUNK, Progress, stream_file


def split_target(spec: str) -> tuple[str, str]:
    """``c1/etc/hosts`` -> ``("c1", "/etc/hosts")``, cleaned the way Go's ``path.Clean`` does."""
    name, sep, rest = spec.partition("/")
    if not sep or not name:
        raise UsageError(f"Invalid target {spec}")
    return name, posixpath.normpath("/" + rest) if rest else "/"


def parse_mode(text: str) -> int:
    """``644``, ``0644`` or ``0o644`` as permission bits."""
    text = text.strip().lower()
    try:
        if text.startswith("0x"):
            return int(text, 16)
        return int(text.removeprefix("0o"), 8)
    except ValueError as exc:
        raise UsageError(f"Invalid mode: {text}") from exc


def files_path(name: str) -> str:
    return f"/1.0/instances/{quote(name, safe='')}/files"


async def post_file(client: Client, name: str, path: str, headers: dict[str, str],
                    content: bytes | BinaryIO | None, size: int = 0,
                    progress: Progress | None = None) -> None:
    """One POST to the files endpoint; streams ``content`` when it is a file."""
    data: Any = content
    hdrs = dict(headers)
    if progress is not None and content is not None and not isinstance(content, bytes):
        data = stream_file(content, size, progress)
        hdrs["Content-Length"] = str(size)
    await client.request("POST", files_path(name), data=data if data is not None else b"",
                         headers=hdrs, params={"path": path})


def _owner_headers(uid: int, gid: int, mode: int | None, kind: str) -> dict[str, str]:
    headers = {"X-LXD-type": kind}
    if uid >= 0:
        headers["X-LXD-uid"] = str(uid)
    if gid >= 0:
        headers["X-LXD-gid"] = str(gid)
    if mode is not None:
        headers["X-LXD-mode"] = f"{mode:04o}"
    return headers


async def mkdir_p(client: Client, name: str, path: str, uid: int, gid: int) -> None:
    """Create ``path`` and its missing parents inside the instance (``-p``)."""
    parts = [p for p in path.split("/") if p]
    for depth in range(1, len(parts) + 1):
        current = "/" + "/".join(parts[:depth])
        async with client.raw("GET", files_path(name), params={"path": current}) as resp:
            if resp.status == 200:
                if resp.headers.get("X-LXD-type") != "directory":
                    raise CliError(f"{current} is not a directory")
                continue
        await post_file(client, name, current, _owner_headers(uid, gid, None, "directory"), None)


async def _push_tree(client: Client, name: str, source: str, target_dir: str) -> None:
    """``-r``: push a local directory tree (directories, files, symlinks) under ``target_dir``."""
    base = os.path.dirname(os.path.normpath(source))
    for root, dirs, files in os.walk(source):
        links = [os.path.join(root, d) for d in dirs if os.path.islink(os.path.join(root, d))]
        for entry in [root, *(os.path.join(root, f) for f in files), *links]:
            st = os.lstat(entry)
            dest = posixpath.join(target_dir, os.path.relpath(entry, base).replace(os.sep, "/"))
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode) and entry == root:
                await post_file(client, name, dest,
                                _owner_headers(st.st_uid, st.st_gid, mode, "directory"), None)
            elif stat.S_ISLNK(st.st_mode):
                await post_file(client, name, dest,
                                _owner_headers(st.st_uid, st.st_gid, mode, "symlink"),
                                os.readlink(entry).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(entry, "rb") as handle:
                    await post_file(client, name, dest,
                                    _owner_headers(st.st_uid, st.st_gid, mode, "file"), handle)


async def push(client: Client, args: argparse.Namespace) -> int:
    """``corral file push SRC... NAME/PATH``: uid, gid and mode default to the local file's."""
    if len(args.paths) < 2:
        raise UsageError("Missing source or target (corral file push SRC... NAME/PATH)")
    *sources, target = args.paths
    name, target_path = split_target(target)
    target_is_dir = target.endswith("/") or target_path == "/"
    if args.recursive:
        if args.uid != -1 or args.gid != -1 or args.mode:
            raise UsageError("Can't supply uid/gid/mode in recursive mode")
        if args.create_dirs:
            await mkdir_p(client, name, target_path, 0, 0)
        for source in sources:
            await _push_tree(client, name, source, target_path)
        return 0
    if len(sources) > 1 and not target_is_dir:
        raise UsageError("Missing target directory")
    for source in sources:
        dest = posixpath.join(target_path, os.path.basename(source)) if target_is_dir \
            else target_path
        await _push_one(client, args, name, source, dest)
    return 0


async def _push_one(client: Client, args: argparse.Namespace, name: str, source: str,
                    dest: str) -> None:
    if source == "-":
        uid, gid, mode = os.getuid(), os.getgid(), 0o644
        data = sys.stdin.buffer.read()
        content: bytes | BinaryIO = data
        size = len(data)
    else:
        try:
            handle = open(source, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise CliError(f"open {source}: {exc.strerror.lower() if exc.strerror else exc}") \
                from exc
        st = os.fstat(handle.fileno())
        uid, gid, mode, content, size = st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), handle, \
            st.st_size
    uid = args.uid if args.uid >= 0 else uid
    gid = args.gid if args.gid >= 0 else gid
    mode = parse_mode(args.mode) if args.mode else mode
    if args.create_dirs:
        await mkdir_p(client, name, posixpath.dirname(dest), uid, gid)
    progress = Progress(f"Pushing {source} to {dest}: {{}}", quiet=args.quiet)
    try:
        await post_file(client, name, dest, _owner_headers(uid, gid, mode, "file"), content,
                        size, progress)
    finally:
        progress.done()
        if not isinstance(content, bytes):
            content.close()


async def _pull_one(client: Client, name: str, path: str, dest: str, recursive: bool,
                    quiet: bool) -> None:
    async with client.raw("GET", files_path(name), params={"path": path}) as resp:
        if resp.status >= 300:
            raise error_from(resp.status, await resp.text())
        kind = resp.headers.get("X-LXD-type", "file")
        mode = parse_mode(resp.headers.get("X-LXD-mode", "0644"))
        if kind == "directory":
            if not recursive:
                raise CliError(f"Can't pull a directory without --recursive: {path}")
            entries = json.loads(await resp.text()).get("metadata") or []
            os.makedirs(dest, mode=mode, exist_ok=True)
            for entry in entries:
                await _pull_one(client, name, posixpath.join(path, entry),
                                os.path.join(dest, entry), recursive, quiet)
            return
        if kind == "symlink":
            link = (await resp.read()).decode().strip()
            if dest != "-":
                os.symlink(link, dest)
            return
        await _write_local(resp, dest, mode, Progress(f"Pulling {path} from {dest}: {{}}",
                                                      quiet=quiet))


async def _write_local(resp: Any, dest: str, mode: int, progress: Progress) -> None:
    out: BinaryIO = sys.stdout.buffer if dest == "-" else open(dest, "wb")  # noqa: SIM115
    received, started = 0, time.monotonic()
    try:
        async for chunk in resp.content.iter_chunked(CHUNK):
            out.write(chunk)
            received += len(chunk)
            speed = received / max(time.monotonic() - started, 1e-3)
            progress.update(f"{fmt.byte_size_si(received)} ({fmt.byte_size_si(speed)}/s)")
    finally:
        progress.done()
        if dest == "-":
            out.flush()
        else:
            out.close()
            os.chmod(dest, mode)


async def pull(client: Client, args: argparse.Namespace) -> int:
    """``corral file pull NAME/PATH... TARGET`` (``-`` for stdout)."""
    if len(args.paths) < 2:
        raise UsageError("Missing source or target (corral file pull NAME/PATH... TARGET)")
    *sources, target = args.paths
    if args.create_dirs and target != "-":
        os.makedirs(target if len(sources) > 1 or target.endswith("/")
                    else os.path.dirname(target) or ".", exist_ok=True)
    into_dir = target != "-" and (os.path.isdir(target) or len(sources) > 1)
    if len(sources) > 1 and not os.path.isdir(target):
        raise UsageError(f"Target path {target} must be a directory")
    for source in sources:
        name, path = split_target(source)
        dest = os.path.join(target, posixpath.basename(path)) if into_dir else target
        await _pull_one(client, name, path, dest, args.recursive, args.quiet)
    return 0


async def delete(client: Client, args: argparse.Namespace) -> int:
    """``corral file delete NAME/PATH...``."""
    for spec in args.paths:
        name, path = split_target(spec)
        await client.request("DELETE", files_path(name), params={"path": path})
    return 0
