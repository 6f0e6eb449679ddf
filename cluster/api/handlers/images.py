"""``/1.0/images``: upload (unified or split) or build, list, get, update, export, delete.

A build is corral's extension of LXD's ``POST /1.0/images`` JSON body (LXD fetches from
an image server here; none is reachable, so corral makes its own small images)::

    {"source": {"type": "build", "kind": "busybox", "vm": false, "uefi": false},
     "aliases": [{"name": "busybox", "description": ""}], "public": false}

It answers with a background operation, like an upload: the member builds the image in
a worker thread (through the node facade), stores it as an upload is stored and records
it (``image.add``); the operation's metadata shows ``build_progress`` text while it runs
and ends with ``fingerprint`` and ``size``. The ``aliases`` are created, or pointed at
the built image when they exist, so building again is safe. An unknown kind or a bad
alias name is refused (400) before anything starts.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, MultipartWriter, web

from cluster.api import queries, schemas, views
from cluster.api.bodies import json_body
from cluster.api.context import Context
from cluster.api.handlers.common import ctx_of
from cluster.api.response import ApiError, async_operation, bad_request, not_found, sync
from cluster.state import validate
from cluster.state.commands import command
from cluster.state.errors import Conflict

MAX_IMAGE_BYTES = 16 * 2**30
CHUNK = 1 << 20


def resolve(ctx: Context, prefix: str) -> str:
    with ctx.store.read() as state:
        found = [fp for fp in state.images if fp.startswith(prefix)] if prefix else []
    if len(found) != 1:
        raise not_found("Image not found") if not found else bad_request(
            "More than one image matches the fingerprint prefix")
    return found[0]


async def list_images(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    with ctx.store.read() as state:
        if queries.recursion(request):
            return sync([views.image(state, i) for i in state.images.values()])
        return sync([f"/1.0/images/{fp}" for fp in state.images])


async def get_image(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    fp = resolve(ctx, request.match_info["fp"])
    with ctx.store.read() as state:
        return sync(views.image(state, state.images[fp]))


async def _save(stream: Any, target: Path) -> int:
    size = 0
    with target.open("wb") as out:
        while True:
            chunk = await (stream.read_chunk(CHUNK) if isinstance(stream, BodyPartReader)
                           else stream.read(CHUNK))
            if not chunk:
                return size
            size += len(chunk)
            if size > MAX_IMAGE_BYTES:
                raise ApiError(413, f"Image larger than {MAX_IMAGE_BYTES} bytes")
            await asyncio.to_thread(out.write, chunk)


async def _receive(request: web.Request, tmp: Path) -> tuple[Path, Path | None]:
    """Store the upload in ``tmp``: one unified tarball, or metadata + rootfs parts."""
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        parts: dict[str, Path] = {}
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.name not in (
                    "metadata", "rootfs", "rootfs.img"):
                raise bad_request("Unexpected part in the image upload")
            parts[part.name] = tmp / part.name
            await _save(part, parts[part.name])
        if "metadata" not in parts:
            raise bad_request("The image upload has no metadata part")
        return parts["metadata"], parts.get("rootfs") or parts.get("rootfs.img")
    target = tmp / "image.tar"
    size = await _save(request.content, target)
    if size == 0:
        raise bad_request("Empty image upload")
    return target, None


async def upload_image(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    if request.content_type == "application/json":
        body = await json_body(request, schemas.ImagesPost)
        source = body.get("source", {})
        if source.get("type") == BUILD:
            return _build(ctx, source, body)
        raise bad_request(f"Image source {source.get('type')!r} is not supported: upload "
                          "the image file, or build one with the source type 'build' (no "
                          "image server is reachable)")
    tmp_root = ctx.paths.images / "tmp"
    tmp_root.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=tmp_root))
    try:
        metadata, rootfs = await _receive(request, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    public = request.headers.get("X-LXD-public", "false") in ("true", "1")
    expected = request.headers.get("X-LXD-fingerprint", "")

    async def run(op: Any) -> dict[str, Any]:
        # The store checks the claimed fingerprint before it stores anything, so a
        # failure here never touches an image that was already there. Nor is anything
        # deleted when the commit below fails: its outcome may be unknown (it can
        # still commit), and files without a record are harmless and reused next time.
        try:
            info = await asyncio.to_thread(ctx.host.import_image, metadata, rootfs,
                                           expected or None)
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
        return await _record(ctx, info, public)

    op = ctx.ops.start("Downloading image", run, {"images": []})
    return async_operation(op.to_dict())


async def _record(ctx: Context, info: Any, public: bool) -> dict[str, Any]:
    """The stored image into the replicated state (this member holds it), announced."""
    await ctx.store.submit(command("image.add", fingerprint=info.fingerprint,
                                   info=info.to_dict(), public=public, member=ctx.member))
    ctx.events.lifecycle("image-created", f"/1.0/images/{info.fingerprint}")
    return {"fingerprint": info.fingerprint, "size": info.size}


BUILD = "build"


def _build(ctx: Context, source: dict[str, Any], body: dict[str, Any]) -> web.Response:
    """Start building ``source["kind"]`` here (see the module docstring); 400 before
    anything starts if the kind or an alias name is bad."""
    problem = ctx.host.image_build_problem(source.get("kind"))
    aliases = body.get("aliases") or []
    for alias in aliases:
        problem = problem or validate.entity_name_error("Alias", alias.get("name"))
    if problem:
        raise bad_request(problem)
    kind, uefi = str(source["kind"]), bool(source.get("uefi"))
    vm = bool(source.get("vm")) or uefi
    public = bool(body.get("public"))

    async def run(op: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()

        def progress(text: str) -> None:  # called in the build's thread
            loop.call_soon_threadsafe(lambda: ctx.ops.update(op, build_progress=text))

        info = await asyncio.to_thread(ctx.host.build_image, kind, vm, uefi, progress)
        result = await _record(ctx, info, public)
        for alias in aliases:
            await _point_alias(ctx, alias["name"], alias.get("description", ""),
                               info.fingerprint)
        op.metadata.pop("build_progress", None)
        return result

    op = ctx.ops.start("Building image", run, {"images": []})
    return async_operation(op.to_dict())


async def _point_alias(ctx: Context, name: str, description: str, fingerprint: str) -> None:
    """Create the alias, or point the existing one at ``fingerprint``: safe to repeat."""
    try:
        await ctx.store.submit(command("alias.create", name=name, target=fingerprint,
                                       description=description))
    except Conflict:
        await ctx.store.submit(command("alias.update", name=name, target=fingerprint,
                                       description=description))


async def update_image(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    fp = resolve(ctx, request.match_info["fp"])
    body = await json_body(request, schemas.ImagePut)
    args: dict[str, Any] = {}
    if "public" in body:
        args["public"] = bool(body["public"])
    if "properties" in body:
        args["properties"] = body["properties"]
    await ctx.store.submit(command("image.update", fingerprint=fp, **args))
    return sync({})


async def delete_image(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    fp = resolve(ctx, request.match_info["fp"])
    await ctx.store.submit(command("image.delete", fingerprint=fp))

    async def run(op: Any) -> None:
        await asyncio.to_thread(ctx.host.delete_image, fp)
        ctx.events.lifecycle("image-deleted", f"/1.0/images/{fp}")

    op = ctx.ops.start("Deleting image", run, {"images": [f"/1.0/images/{fp}"]})
    return async_operation(op.to_dict())


async def export_image(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    fp = resolve(ctx, request.match_info["fp"])
    paths = await asyncio.to_thread(ctx.host.image_export_paths, fp)
    if len(paths) == 1:
        return web.FileResponse(paths[0], headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"attachment; filename={fp}.tar.gz"})
    writer = MultipartWriter("form-data")
    for name, path in zip(("metadata", _rootfs_part(paths[1])), paths, strict=False):
        part = writer.append(open(path, "rb"))  # noqa: SIM115 - aiohttp closes it
        part.set_content_disposition("form-data", name=name, filename=path.name)
    response = web.StreamResponse(headers={"Content-Type": writer.content_type})
    await response.prepare(request)
    await writer.write(response)  # type: ignore[arg-type]
    await response.write_eof()
    return response


def _rootfs_part(path: Path) -> str:
    return "rootfs.img" if path.name.endswith(".img") else "rootfs"


def cleanup_uploads(images_dir: Path) -> None:
    """Remove partial uploads left by a crash."""
    tmp = images_dir / "tmp"
    if tmp.is_dir():
        for entry in os.listdir(tmp):
            shutil.rmtree(tmp / entry, ignore_errors=True)


ROUTES = [
    ("GET", "/1.0/images", list_images),
    ("POST", "/1.0/images", upload_image),
    ("GET", "/1.0/images/{fp:[0-9a-fA-F]+}", get_image),
    ("PUT", "/1.0/images/{fp:[0-9a-fA-F]+}", update_image),
    ("PATCH", "/1.0/images/{fp:[0-9a-fA-F]+}", update_image),
    ("DELETE", "/1.0/images/{fp:[0-9a-fA-F]+}", delete_image),
    ("GET", "/1.0/images/{fp:[0-9a-fA-F]+}/export", export_image),
]
