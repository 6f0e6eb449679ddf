"""``/1.0/instances/<name>/logs``: liblxc's log, the console log and recorded exec output.

Only the names this module lists can be read, so a request can never name another
file. ``exec_*`` files (written by ``exec`` with ``record-output``) can be deleted.
The newer LXD paths ``logs/exec-output[/<file>]`` serve the same exec files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from cluster.api.handlers.common import ctx_of
from cluster.api.handlers.files import local_spec
from cluster.api.response import bad_request, empty, not_found, sync

LXC_LOG = "lxc.log"  # listed before the container first starts (served empty then)


async def _files(request: web.Request, exec_only: bool = False) -> dict[str, Path]:
    ctx = ctx_of(request)
    name = request.match_info["name"]
    local_spec(ctx, name)  # 404 for an unknown instance, 400 for one on another member
    host = ctx.host
    return await asyncio.to_thread(host.exec_files if exec_only else host.log_files, name)


async def list_logs(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return sync([f"/1.0/instances/{name}/logs/{f}" for f in await _files(request)])


async def list_exec_output(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    files = await _files(request, exec_only=True)
    return sync([f"/1.0/instances/{name}/logs/exec-output/{f}" for f in files])


async def _serve(request: web.Request, exec_only: bool) -> web.StreamResponse:
    path = (await _files(request, exec_only)).get(request.match_info["file"])
    if path is None:
        raise not_found("Log file not found")
    if not await asyncio.to_thread(path.is_file):
        if path.name == LXC_LOG:
            return web.Response(text="", content_type="text/plain")  # not started yet
        raise not_found("Log file not found")
    return web.FileResponse(path, headers={"Content-Type": "text/plain; charset=utf-8"})


async def get_log(request: web.Request) -> web.StreamResponse:
    return await _serve(request, exec_only=False)


async def get_exec_output(request: web.Request) -> web.StreamResponse:
    return await _serve(request, exec_only=True)


async def delete_log(request: web.Request) -> web.Response:
    file = request.match_info["file"]
    if not file.startswith("exec_"):
        raise bad_request("Only exec output files can be deleted")
    path = (await _files(request, exec_only=True)).get(file)
    if path is None:
        raise not_found("Log file not found")
    try:
        await asyncio.to_thread(path.unlink)
    except FileNotFoundError as exc:
        raise not_found("Log file not found") from exc
    return empty()


ROUTES = [
    ("GET", "/1.0/instances/{name}/logs", list_logs),
    ("GET", "/1.0/instances/{name}/logs/exec-output", list_exec_output),
    ("GET", "/1.0/instances/{name}/logs/exec-output/{file}", get_exec_output),
    ("DELETE", "/1.0/instances/{name}/logs/exec-output/{file}", delete_log),
    ("GET", "/1.0/instances/{name}/logs/{file}", get_log),
    ("DELETE", "/1.0/instances/{name}/logs/{file}", delete_log),
]
