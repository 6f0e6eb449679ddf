"""``/1.0/instances/<name>/files?path=P``: pull, push and delete files as LXD does.

Every path is resolved inside the instance's rootfs by ``node_agent.safe_path``
(``openat2`` with ``RESOLVE_IN_ROOT``), so neither ``..`` nor a symlink can reach the
host. Ids on the wire are the container's; on disk an unprivileged container's ids are
shifted by the node's id map. All file I/O runs in worker threads.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import os
import posixpath
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from cluster.api.context import Context
from cluster.api.handlers.common import ctx_of
from cluster.api.response import ApiError, bad_request, empty, not_found, sync
from cluster.state.model import Instance
from node_agent import safe_path as sp
from node_agent.facade import InstanceSpec

MAX_UPLOAD = 4 << 30
WRITE_BUFFER = 1 << 20
READ_CHUNK = 1 << 20
SYMLINK_MAX = 4096
PATH_MAX = 4096  # bytes with the final NUL, as linux/limits.h
OVERFLOW_ID = 65534  # how the kernel shows an unmapped id inside a user namespace
T = TypeVar("T")

_ERRORS: dict[int, tuple[int, str]] = {
    errno.ENOENT: (404, "Path not found"), errno.ENOTDIR: (404, "Path not found"),
    errno.EEXIST: (409, "File already exists"), errno.ENOTEMPTY: (400, "Directory not empty"),
    errno.EISDIR: (400, "Path is a directory"), errno.ELOOP: (400, "Too many symbolic links"),
    errno.ENXIO: (400, "Not a regular file"), errno.EACCES: (403, "Permission denied"),
    errno.EPERM: (403, "Permission denied"), errno.EAGAIN: (409, "Path changed, try again"),
    errno.ENAMETOOLONG: (400, "File name too long"),
}


def local_spec(ctx: Context, name: str) -> tuple[Instance, InstanceSpec]:
    """A copy of the named instance and its expanded spec.

    Raises 404 if there is no such instance, 400 if it lives on another member.
    """
    with ctx.store.read() as state:
        found = state.instances.get(name)
        if found is None:
            raise not_found("Instance not found")
        spec = ctx.host.spec_of(state, found)
        inst = copy.deepcopy(found)
    if inst.location != ctx.member:
        raise bad_request(f"Instance {name!r} is on cluster member {inst.location!r}")
    return inst, spec


@dataclass(frozen=True)
class Target:
    """Where an instance's files live and how its ids map to the host's."""

    rootfs: Path
    uid_shift: int
    gid_shift: int
    count: int  # ids mapped (ignored when unshifted)

    def to_host(self, cid: int, shift: int) -> int:
        if cid < 0:
            return -1
        if shift and cid >= self.count:
            raise bad_request(f"Id {cid} is outside the container's id map")
        return cid + shift

    def to_container(self, hid: int, shift: int) -> int:
        if not shift:
            return hid
        return hid - shift if shift <= hid < shift + self.count else OVERFLOW_ID


def target_of(ctx: Context, name: str) -> Target:
    _, spec = local_spec(ctx, name)
    found = ctx.host.file_target(spec)
    return Target(found.rootfs, found.uid_shift, found.gid_shift, found.count)


def translate(exc: OSError) -> ApiError:
    status, message = _ERRORS.get(exc.errno or 0, (500, ""))
    if exc.errno == errno.EINVAL:
        return bad_request(exc.strerror or "Invalid path")
    return ApiError(status, message or f"File operation failed: {exc.strerror or exc}")


async def in_root(rootfs: Path, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(root_fd, *args)`` in a worker thread; ``OSError`` becomes an ``ApiError``."""

    def call() -> T:
        with sp.open_root(rootfs) as root:
            return fn(root, *args)

    try:
        return await asyncio.to_thread(call)
    except OSError as exc:
        raise translate(exc) from exc


def _path(request: web.Request) -> str:
    path = request.query.get("path", "")
    if not path:
        raise bad_request("Missing path argument")
    if "\0" in path:
        raise bad_request("Invalid path")
    if len(path.encode("utf-8", "surrogatepass")) >= PATH_MAX:  # the kernel's limit
        raise bad_request("File name too long")
    return sp.clean(path)


def _int_header(request: web.Request, key: str) -> int:
    try:
        return int(request.headers.get(key, ""))
    except ValueError:
        return -1  # LXD: absent or unparsable means "not given"


def _mode_header(request: web.Request) -> int:
    raw = request.headers.get("X-LXD-mode", "").strip().lower().removeprefix("0o")
    try:
        return int(raw, 8) & 0o777 if raw else -1
    except ValueError:
        return -1


def _headers(target: Target, kind: str, st: os.stat_result) -> dict[str, str]:
    modified = time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(st.st_mtime))
    return {"X-LXD-uid": str(target.to_container(st.st_uid, target.uid_shift)),
            "X-LXD-gid": str(target.to_container(st.st_gid, target.gid_shift)),
            "X-LXD-mode": f"{stat.S_IMODE(st.st_mode) & 0o777:04o}", "X-LXD-type": kind,
            "X-LXD-modified": modified}


async def get_file(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    name = request.match_info["name"]
    path = _path(request)
    target = target_of(ctx, name)
    entry = await in_root(target.rootfs, sp.lookup, path)
    headers = _headers(target, entry.kind, entry.st)
    ctx.events.lifecycle("instance-file-retrieved", f"/1.0/instances/{name}", path=path)
    if entry.kind == "directory":
        response = sync(entry.names)
        response.headers.update(headers)
        return response
    if entry.kind == "symlink":
        link = entry.target
        if not link.startswith("/"):
            link = posixpath.join(posixpath.dirname(path.rstrip("/")) or "/", link)
        body = posixpath.normpath(link).encode()
        return web.Response(body=body, content_type="application/octet-stream", headers={
            **headers, "Content-Disposition": _disposition(path)})
    try:
        return await _stream(request, entry.fd, entry.st, _disposition(path), headers)
    finally:
        await asyncio.to_thread(os.close, entry.fd)


def _disposition(path: str) -> str:
    name = "".join(c for c in posixpath.basename(path.rstrip("/")) if c.isprintable())
    return f"inline;filename={name}"


async def _stream(request: web.Request, fd: int, st: os.stat_result, disposition: str,
                  headers: dict[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        **headers, "Content-Type": "application/octet-stream",
        "Content-Disposition": disposition})
    response.content_length = st.st_size
    response.last_modified = st.st_mtime
    await response.prepare(request)
    left = st.st_size
    try:
        while left > 0:
            chunk = await asyncio.to_thread(os.read, fd, min(READ_CHUNK, left))
            if not chunk:
                break  # the file shrank while being read: the client sees a short body
            left -= len(chunk)
            await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away: nothing left to tell it
    return response


async def post_file(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    name = request.match_info["name"]
    path = _path(request)
    target = target_of(ctx, name)
    uid, gid = _int_header(request, "X-LXD-uid"), _int_header(request, "X-LXD-gid")
    mode = _mode_header(request)
    kind = request.headers.get("X-LXD-type") or "file"
    write = request.headers.get("X-LXD-write") or "overwrite"
    if write not in ("overwrite", "append"):
        raise bad_request(f"Bad file write mode: {write}")
    owner = (target.to_host(max(uid, 0), target.uid_shift),
             target.to_host(max(gid, 0), target.gid_shift))
    if kind == "file":
        await _write_file(request, target, path, write == "append", uid, gid, mode)
    elif kind == "directory":
        await in_root(target.rootfs, sp.make_dir, path, *owner, mode if mode >= 0 else 0o755)
    elif kind == "symlink":
        link = await _small_body(request)
        await in_root(target.rootfs, sp.make_symlink, path, link, *owner)
    else:
        raise bad_request(f"Bad file type: {kind}")
    ctx.events.lifecycle("instance-file-pushed", f"/1.0/instances/{name}", path=path)
    return empty()


async def _small_body(request: web.Request) -> str:
    data = await request.content.read(SYMLINK_MAX + 1)
    if len(data) > SYMLINK_MAX:
        raise bad_request("Symlink target too long")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise bad_request("Symlink target is not UTF-8") from exc


async def _write_file(request: web.Request, target: Target, path: str, append: bool,
                      uid: int, gid: int, mode: int) -> None:
    """Stream the body into the file; a file this call created is removed on failure."""
    if (request.content_length or 0) > MAX_UPLOAD:
        raise ApiError(413, "File too large (limit 4 GiB)")
    host_uid, host_gid = (target.to_host(uid, target.uid_shift),
                          target.to_host(gid, target.gid_shift))
    fd, created = await in_root(target.rootfs, sp.open_for_write, path, append)
    try:
        await _copy_body(request, fd)
        if created:  # new files: root-owned 0644 unless told (LXD's sftp server runs as root)
            host_uid = target.to_host(max(uid, 0), target.uid_shift)
            host_gid = target.to_host(max(gid, 0), target.gid_shift)
            mode = mode if mode >= 0 else 0o644
        await asyncio.to_thread(sp.set_owner_mode, fd, host_uid, host_gid, mode)
    except BaseException:
        if created:
            try:
                await in_root(target.rootfs, sp.remove, path)
            except ApiError:
                pass
        raise
    finally:
        await asyncio.to_thread(os.close, fd)


async def _copy_body(request: web.Request, fd: int) -> None:
    total = 0
    buffer = bytearray()
    try:
        async for chunk in request.content.iter_chunked(WRITE_BUFFER):
            total += len(chunk)
            if total > MAX_UPLOAD:
                raise ApiError(413, "File too large (limit 4 GiB)")
            buffer += chunk
            if len(buffer) >= WRITE_BUFFER:
                await asyncio.to_thread(sp.write_all, fd, bytes(buffer))
                buffer.clear()
        if buffer:
            await asyncio.to_thread(sp.write_all, fd, bytes(buffer))
    except OSError as exc:
        raise translate(exc) from exc


async def delete_file(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    name = request.match_info["name"]
    path = _path(request)
    target = target_of(ctx, name)
    await in_root(target.rootfs, sp.remove, path)
    ctx.events.lifecycle("instance-file-deleted", f"/1.0/instances/{name}", path=path)
    return empty()


ROUTES = [
    ("GET", "/1.0/instances/{name}/files", get_file),
    ("POST", "/1.0/instances/{name}/files", post_file),
    ("DELETE", "/1.0/instances/{name}/files", delete_file),
]
