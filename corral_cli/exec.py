"""``corral exec``: LXD's exec websocket protocol, client side, as ``lxc exec`` speaks it.

::

    POST /1.0/instances/NAME/exec {wait-for-websocket: true, interactive, ...}
      -> async operation, metadata.fds = {"0", "1", "2", "control"} (or {"0", "control"})
    GET /1.0/operations/<id>/websocket?secret=<fd secret>   (control first, then 0, 1, 2)
      fd 0   <- local stdin as binary frames; at EOF one empty *text* frame (the "barrier")
      fd 1/2 -> local stdout/stderr until a text frame or a close
      (interactive: fd 0 carries both directions of the pty)
      control <- {"command": "window-resize"|"signal", "args": {...}, "signal": N}
    output ends -> close fds 0/1/2 (LXD's interactive mirror waits for that)
    GET /1.0/operations/<id>/wait  -> metadata.return is our exit code

The control websocket stays open until the operation has ended: LXD kills the command
when the control socket closes early.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from corral_cli.client import ApiError, Client, CliError, UsageError

if TYPE_CHECKING:
    import aiohttp

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT,
                     signal.SIGABRT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)
DRAIN_GRACE = 2.0  # seconds to let output arrive after the operation has ended


def is_interactive(args: argparse.Namespace, stdin_tty: bool, stdout_tty: bool) -> bool:
    """lxc's rule: -n wins, then --mode/-t/-T, else interactive iff stdin and stdout are TTYs."""
    if args.force_interactive and args.force_noninteractive:
        raise UsageError("You can't pass -t and -T at the same time")
    if args.mode != "auto" and (args.force_interactive or args.force_noninteractive):
        raise UsageError("You can't pass -t or -T at the same time as --mode")
    if args.disable_stdin:
        return False
    if args.mode == "interactive" or args.force_interactive:
        return True
    if args.mode == "non-interactive" or args.force_noninteractive:
        return False
    return stdin_tty and stdout_tty


def exec_body(args: argparse.Namespace, interactive: bool, environ: dict[str, str],
              size: tuple[int, int]) -> dict[str, Any]:
    """The POST body, field for field what ``lxc exec`` sends (TERM passes through)."""
    env = {"TERM": environ["TERM"]} if "TERM" in environ else {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    return {"command": list(args.command), "wait-for-websocket": True,
            "interactive": interactive, "environment": env, "width": size[0],
            "height": size[1], "record-output": False, "user": args.user,
            "group": args.group, "cwd": args.cwd}


def control_message(command: str, args: dict[str, str] | None = None, sig: int = 0) -> str:
    return json.dumps({"command": command, "args": args, "signal": sig})


class StdinReader:
    """Local stdin as an asyncio queue of chunks (``b""`` at EOF).

    A daemon thread does the blocking reads: stdin may be a tty, a pipe or a regular
    file, and only a thread handles all three; it is abandoned, not joined, at exit.
    """

    def __init__(self, fd: int | None) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.thread: threading.Thread | None = None
        if fd is None:
            self.queue.put_nowait(b"")
            return
        loop = asyncio.get_running_loop()
        self.thread = threading.Thread(target=self._pump, args=(fd, loop), daemon=True)
        self.thread.start()

    def _pump(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, chunk)
            except RuntimeError:
                return  # the session ended (its loop is closed) before stdin did
            if not chunk:
                return


@contextlib.contextmanager
def raw_terminal(fd: int, enabled: bool) -> Iterator[None]:
    """Put the local terminal in raw mode for an interactive session, and always restore it."""
    if not enabled:
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return 0, 0
    return size.columns, size.lines


async def send_stdin(ws: aiohttp.ClientWebSocketResponse, reader: StdinReader) -> None:
    """Copy stdin to fd 0; at EOF send the empty text frame LXD reads as end of input."""
    while True:
        chunk = await reader.queue.get()
        if ws.closed:
            return
        if not chunk:
            await ws.send_str("")
            return
        await ws.send_bytes(chunk)


async def receive(ws: aiohttp.ClientWebSocketResponse, out: Any) -> None:
    """Copy binary frames to ``out`` until the barrier (a text frame) or a close."""
    import aiohttp

    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.BINARY:
            break
        out.write(msg.data)
        out.flush()


class ExecSession:
    """The websockets of one exec operation and the local plumbing around them."""

    def __init__(self, client: Client, op: dict[str, Any], op_url: str, interactive: bool) -> None:
        self.client = client
        self.op_id = str(op["id"])
        self.op_url = op_url
        self.fds: dict[str, str] = dict((op.get("metadata") or {}).get("fds") or {})
        self.interactive = interactive
        self.sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}

    async def connect(self) -> None:
        # lxc's order: control first, then the data streams; the server starts the
        # command once every one of them is connected.
        for fd in ("control", "0", "1", "2"):
            if fd in self.fds:
                self.sockets[fd] = await self.client.websocket(
                    f"/1.0/operations/{quote(self.op_id)}/websocket?secret={quote(self.fds[fd])}")

    def _send_control(self, message: str) -> None:
        control = self.sockets.get("control")
        if control is not None and not control.closed:
            asyncio.ensure_future(control.send_str(message))

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGWINCH:
            width, height = terminal_size()
            self._send_control(control_message(
                "window-resize", {"width": str(width), "height": str(height)}))
        else:
            self._send_control(control_message("signal", sig=signum))

    async def run(self, disable_stdin: bool) -> dict[str, Any]:
        """Stream until the command ends; return the final operation."""
        reader = StdinReader(None if disable_stdin else sys.stdin.fileno())
        stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
        tasks = [asyncio.ensure_future(send_stdin(self.sockets["0"], reader))]
        outputs = [asyncio.ensure_future(receive(self.sockets["0"] if self.interactive
                                                 else self.sockets["1"], stdout))]
        if not self.interactive and "2" in self.sockets:
            outputs.append(asyncio.ensure_future(receive(self.sockets["2"], stderr)))
        op_task = asyncio.ensure_future(self.client.wait_operation(self.op_url))
        all_output: asyncio.Future[Any] = asyncio.gather(*outputs)
        try:
            await asyncio.wait([op_task, all_output], return_when=asyncio.FIRST_COMPLETED)
            # Output normally ends first; give it a moment when the operation won the race.
            await asyncio.wait(outputs, timeout=DRAIN_GRACE)
            # Like lxc, close the data streams as soon as output has ended: LXD's pty mirror
            # (interactive mode) only lets the operation finish once fd 0 is closed.
            await self._close([fd for fd in self.sockets if fd != "control"])
            return await op_task
        finally:
            for task in [*tasks, *outputs, all_output, op_task]:
                task.cancel()
            await self._close(list(self.sockets))

    async def _close(self, fds: list[str]) -> None:
        for fd in fds:
            with contextlib.suppress(Exception):
                await self.sockets[fd].close()


async def run(client: Client, args: argparse.Namespace) -> int:
    """``corral exec NAME [flags] -- CMD...``; returns the command's exit status."""
    if not args.command:
        raise UsageError("Missing command to run (corral exec NAME -- COMMAND...)")
    stdin_tty, stdout_tty = os.isatty(0), os.isatty(1)
    interactive = is_interactive(args, stdin_tty, stdout_tty)
    size = terminal_size() if stdout_tty else (0, 0)
    body = exec_body(args, interactive, dict(os.environ), size)
    resp = await client.request("POST", f"/1.0/instances/{quote(args.name, safe='')}/exec",
                                body=body)
    session = ExecSession(client, resp.metadata, resp.operation, interactive)
    await session.connect()
    loop = asyncio.get_running_loop()
    watched = [*FORWARDED_SIGNALS, *([signal.SIGWINCH] if interactive else [])]
    for signum in watched:
        loop.add_signal_handler(signum, session.on_signal, signum)
    try:
        with raw_terminal(0, interactive and stdin_tty):
            op = await session.run(args.disable_stdin)
    except ApiError as exc:
        code = (exc.metadata or {}).get("return") if isinstance(exc.metadata, dict) else None
        raise CliError(exc.message, exit_code=int(code) if code else 1) from exc
    finally:
        for signum in watched:
            loop.remove_signal_handler(signum)
    return int((op.get("metadata") or {}).get("return") or 0)
