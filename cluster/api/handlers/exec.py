"""``POST /1.0/instances/<name>/exec``: run a command in a running container, as LXD does.

With ``wait-for-websocket`` the operation (class "websocket") hands out one secret per fd
and the command runs once the client has connected (see ``exec_session``). Without it
the command runs at once (class "task") with stdin from ``/dev/null`` and its output
recorded to ``exec_<op>.stdout``/``.stderr`` (``record-output``) or discarded. Either
way the operation ends with ``{"return": <exit status>}`` in its metadata.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from cluster.api import schemas
from cluster.api.bodies import json_body
from cluster.api.handlers.common import ctx_of, live_statuses
from cluster.api.handlers.exec_session import ExecError, ExecSession, exit_code
from cluster.api.handlers.files import local_spec
from cluster.api.op_registry import Operation
from cluster.api.response import async_operation, bad_request

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_ID = 2**32 - 1


@dataclass(frozen=True)
class ExecRequest:
    """A validated ``InstanceExecPost``."""

    command: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    interactive: bool = False
    wait_for_websocket: bool = False
    record_output: bool = False
    width: int = 0
    height: int = 0
    user: int = 0
    group: int = 0
    cwd: str = ""


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"Invalid value for {key!r}: expected a boolean")
    return value


def _number(body: dict[str, Any], key: str, limit: int) -> int:
    value = body.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise bad_request(f"Invalid value for {key!r}: expected an integer in 0..{limit}")
    return value


def parse_exec_body(body: dict[str, Any]) -> ExecRequest:
    """Validate an exec request body; raises ``ApiError(400)`` naming the bad field."""
    command = body.get("command")
    if (not isinstance(command, list) or not command
            or not all(isinstance(c, str) for c in command)):
        raise bad_request("Invalid value for 'command': expected a non-empty list of strings")
    environment = body.get("environment") or {}
    if not isinstance(environment, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in environment.items()):
        raise bad_request("Invalid value for 'environment': expected a map of strings")
    if any(not k or "=" in k or "\0" in k + v for k, v in environment.items()):
        raise bad_request("Invalid environment variable name or value")
    cwd = body.get("cwd") or ""
    if not isinstance(cwd, str) or "\0" in cwd:
        raise bad_request("Invalid value for 'cwd': expected a string")
    req = ExecRequest(
        command=list(command), environment=dict(environment),
        interactive=_flag(body, "interactive"),
        wait_for_websocket=_flag(body, "wait-for-websocket"),
        record_output=_flag(body, "record-output"),
        width=_number(body, "width", 0xFFFF), height=_number(body, "height", 0xFFFF),
        user=_number(body, "user", MAX_ID), group=_number(body, "group", MAX_ID), cwd=cwd)
    if req.record_output and req.wait_for_websocket:
        raise bad_request('Cannot use "record-output" in combination with "wait-for-websocket"')
    if req.record_output and req.interactive:
        raise bad_request('Cannot use "interactive" in combination with "record-output"')
    return req


def exec_environment(req: ExecRequest, config: dict[str, str]) -> dict[str, str]:
    """The request's environment over the instance's ``environment.*`` over LXD's defaults."""
    env = {k.removeprefix("environment."): v for k, v in config.items()
           if k.startswith("environment.")}
    env.update(req.environment)
    env.setdefault("PATH", DEFAULT_PATH)
    if req.user == 0:
        env.setdefault("HOME", "/root")
        env.setdefault("USER", "root")
    env.setdefault("LANG", "C.UTF-8")
    if req.interactive:
        env.setdefault("TERM", "xterm")
    return env


def exec_cwd(req: ExecRequest, env: dict[str, str]) -> str:
    """The working directory: the request's, else ``$HOME``; ``""`` means ``/``."""
    cwd = req.cwd or env.get("HOME", "") or "/"
    return "" if cwd == "/" else cwd


async def post_exec(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    name = request.match_info["name"]
    req = parse_exec_body(await json_body(request, schemas.Exec))
    inst, spec = local_spec(ctx, name)
    status = (await live_statuses(ctx, [inst]))[name]
    if status == "Frozen":
        raise bad_request("Instance is frozen")
    if status != "Running":
        raise bad_request("Instance is not running")
    env = exec_environment(req, spec.config)
    if inst.type == "virtual-machine" and req.interactive:  # the agent has no pty yet
        raise bad_request("Interactive exec in virtual machines is not supported yet")
    argv = await asyncio.to_thread(ctx.host.exec_argv, inst.type, name, req.command, env,
                                   exec_cwd(req, env), req.user, req.group)
    url = f"/1.0/instances/{name}"
    resources = {"instances": [url], "containers": [url]}
    if not req.wait_for_websocket:
        out_dir = ctx.host.exec_output_dir(name) if req.record_output else None

        async def run(op: Operation) -> dict[str, Any]:
            return await run_detached(op, argv, name, out_dir)

        op = ctx.ops.start("Executing command", run, resources)
        return async_operation(op.to_dict())
    session = ExecSession(argv, req.interactive, req.width, req.height)

    def prepare(op: Operation) -> None:
        session.prepare(op)
        op.metadata.update(command=req.command, environment=env, interactive=req.interactive)

    op = ctx.ops.start("Executing command", session.run, resources, class_="websocket",
                       prepare=prepare)
    return async_operation(op.to_dict())


def _open_outputs(out_dir: Path, op_id: str) -> tuple[int, int]:
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    stdout = os.open(out_dir / f"exec_{op_id}.stdout", flags, 0o600)
    try:
        return stdout, os.open(out_dir / f"exec_{op_id}.stderr", flags, 0o600)
    except BaseException:
        os.close(stdout)
        raise


async def run_detached(op: Operation, argv: list[str], name: str,
                       out_dir: Path | None) -> dict[str, Any]:
    """Run the command without websockets; ``return`` and, if recorded, ``output`` URLs."""
    result: dict[str, Any] = {}
    outputs: tuple[int, int] | None = None
    if out_dir is not None:
        outputs = await asyncio.to_thread(_open_outputs, out_dir, op.id)
        base = f"/1.0/instances/{name}/logs/exec_{op.id}"
        result["output"] = {"1": f"{base}.stdout", "2": f"{base}.stderr"}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL,
            stdout=outputs[0] if outputs else subprocess.DEVNULL,
            stderr=outputs[1] if outputs else subprocess.DEVNULL,
            cwd="/", start_new_session=True)
    except OSError as exc:
        raise ExecError(f"Failed to run the command: {exc}") from exc
    finally:
        for fd in outputs or ():
            os.close(fd)
    try:
        result["return"] = exit_code(await proc.wait())
    finally:
        if proc.returncode is None:  # the daemon is shutting down: leave nothing behind
            _kill_group(proc.pid)
    return result


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


ROUTES = [("POST", "/1.0/instances/{name}/exec", post_exec)]
