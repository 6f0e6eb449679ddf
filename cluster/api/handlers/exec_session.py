"""One exec session over websockets: LXD's fd protocol on top of a local process.

::

    ws "0" ──queue──> feeder ──> stdin pipe | pty master
    stdout/stderr pipes | pty master ──> pumps ──> ws "1", "2" | ws "0"
    ws "control" ──> window-resize (TIOCSWINSZ + SIGWINCH), signal (to the process group)

The process starts once every fd but "control" is connected. Stdin frames (binary or
text) are data; an empty frame, or the client closing "0", ends a non-interactive stdin.
Output is sent as binary frames; at EOF the output websockets are closed, and the client's
close frame awaited, *before* the operation completes: a client that reads ``return`` has
already read all output.
A client that goes away before the end (any other websocket closed) has its process
killed. All process I/O uses non-blocking fds driven by the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import pty
import signal
import struct
import termios
from typing import Any

from aiohttp import WSMsgType, web

from cluster.api.op_registry import Operation
from cluster.api.response import ApiError

CONNECT_TIMEOUT = 10.0  # LXD waits 5 s for the websockets of an exec
DRAIN_IDLE = 1.0  # after exit, output left open by a background child is not waited for
CLOSE_TIMEOUT = 3.0  # for the client's answer to our close frame
CHUNK = 64 * 1024
STDIN_BACKLOG = 16  # queued stdin frames before the websocket stops being read
MAX_MESSAGE = 64 * 1024 * 1024
RAW_WAIT = 2.0  # see _wait_raw
CTTY_SESSION = ("setsid", "--ctty", "--wait")  # util-linux; --wait only matters if it forks


class ExecError(Exception):
    """The session could not run the command; the operation fails with this message."""


async def _ready(fd: int, write: bool) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def read_fd(fd: int) -> bytes:
    """The next chunk of a non-blocking fd; ``b""`` at EOF (``EIO``: a pty nobody holds)."""
    while True:
        try:
            return os.read(fd, CHUNK)
        except BlockingIOError:
            await _ready(fd, write=False)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise


async def write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking fd."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await _ready(fd, write=True)


def exit_code(returncode: int) -> int:
    """A shell's exit status: ``128 + n`` for death by signal ``n``."""
    return 128 - returncode if returncode < 0 else returncode


def set_winsize(fd: int, width: int, height: int) -> None:
    if width > 0 and height > 0:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


class ExecSession:
    """Websockets, process and fds of one ``wait-for-websocket`` exec."""

    def __init__(self, argv: list[str], interactive: bool, width: int, height: int) -> None:
        self.argv = argv
        self.interactive = interactive
        self.size = (width, height)
        self.required = ("0",) if interactive else ("0", "1", "2")
        self.claimed: set[str] = set()
        self.sockets: dict[str, web.WebSocketResponse] = {}  # prepared ones only
        self.closed_by_us: set[str] = set()
        self.readers: dict[str, asyncio.Task[None]] = {}
        self.closers: dict[str, asyncio.Task[None]] = {}
        self.ready = asyncio.Event()  # all required fds connected, or the client left
        self.finished = asyncio.Event()
        self.stdin: asyncio.Queue[bytes | None] = asyncio.Queue(STDIN_BACKLOG)
        self.proc: asyncio.subprocess.Process | None = None
        self.owned: set[int] = set()
        self.master = -1
        self.gone = ""
        self.eof = False  # non-interactive stdin ended
        self.activity = 0

    def prepare(self, op: Operation) -> None:
        """Give the operation one secret per fd and route its websockets here."""
        op.metadata["fds"] = {fd: op.new_secret(fd) for fd in (*self.required, "control")}
        op.websocket = self.websocket

    # -- websockets -------------------------------------------------------------------------

    async def websocket(self, request: web.Request, fd: str) -> web.StreamResponse:
        """Serve one fd's websocket until the client closes it or the command ends."""
        if fd in self.claimed:
            raise ApiError(400, "Websocket number already connected")
        if self.finished.is_set():
            raise ApiError(400, "The command has already finished")
        self.claimed.add(fd)
        ws = web.WebSocketResponse(timeout=CLOSE_TIMEOUT, max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)
        self.sockets[fd] = ws
        if all(f in self.sockets for f in self.required):
            self.ready.set()
        reader = self.readers[fd] = asyncio.create_task(self._receive(fd, ws))
        ended = asyncio.create_task(self.finished.wait())
        try:
            await asyncio.wait((reader, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:  # aiohttp may cancel this handler when the client drops the connection
            reader.cancel()
            ended.cancel()
            if not self.finished.is_set() and fd not in self.closed_by_us:
                self._client_left(fd)
        if fd in self.closers:  # returning now would drop the connection before the ack
            await asyncio.gather(self.closers[fd], return_exceptions=True)
        await ws.close()
        return ws

    async def _receive(self, fd: str, ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                continue
            if fd == "control":
                self._control(msg.data)
            elif fd == "0" and not self.eof:
                data = msg.data.encode() if isinstance(msg.data, str) else msg.data
                if data:
                    await self.stdin.put(data)
                elif not self.interactive:
                    self._end_stdin()

    def _end_stdin(self) -> None:
        """Mark stdin's EOF; the feeder closes the pipe once the queued frames are written."""
        self.eof = True
        with contextlib.suppress(asyncio.QueueFull):
            self.stdin.put_nowait(None)  # wakes an idle feeder (a busy one sees the flag)

    def _client_left(self, fd: str) -> None:
        if fd == "0" and not self.interactive:
            self._end_stdin()  # closing stdin is EOF, not a disconnect
            return
        self.gone = f"Websocket {fd!r} closed by the client"
        self.ready.set()
        self._signal(signal.SIGKILL)

    def _control(self, data: str | bytes) -> None:
        try:
            msg = json.loads(data)
            command = msg.get("command")
            if command == "window-resize" and self.interactive:
                args = msg.get("args") or {}
                self.size = (int(args["width"]), int(args["height"]))
                if self.master >= 0:
                    set_winsize(self.master, *self.size)
                    self._signal(signal.SIGWINCH)
            elif command == "signal":
                self._signal(int(msg["signal"]))
        except (ValueError, TypeError, KeyError, AttributeError, OSError):
            return  # LXD ignores control messages it cannot use

    def _signal(self, signum: int) -> None:
        """Signal the process group (lxc-attach and, without a pty, the command)."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, signum)
        except (OSError, ValueError):
            try:
                proc.send_signal(signum)
            except (OSError, ValueError):
                pass

    # -- the process --------------------------------------------------------------------------

    async def run(self, op: Operation) -> dict[str, Any]:
        """The operation's body: wait for the client, run the command, report ``return``."""
        try:
            try:
                await asyncio.wait_for(self.ready.wait(), CONNECT_TIMEOUT)
            except TimeoutError:
                raise ExecError("Timed out waiting for websockets to connect") from None
            if self.gone:
                raise ExecError(self.gone)
            return {"return": await self._execute()}
        finally:
            self.finished.set()

    def _channels(self) -> tuple[tuple[int, int, int], int, dict[str, int]]:
        """(child's stdin, stdout, stderr), our stdin fd, our output fd per websocket.

        Every fd made is in ``owned`` until ``_release``d, so none leaks on failure.
        """
        if self.interactive:
            master, slave = pty.openpty()
            self.owned.update((master, slave))
            set_winsize(master, *self.size)
            os.set_blocking(master, False)
            self.master = master
            return (slave, slave, slave), master, {"0": master}
        pipes = []
        for _ in range(3):
            pipes.append(os.pipe())
            self.owned.update(pipes[-1])
        ours = (pipes[0][1], pipes[1][0], pipes[2][0])
        for fd in ours:
            os.set_blocking(fd, False)
        return (pipes[0][0], pipes[1][1], pipes[2][1]), ours[0], {"1": ours[1], "2": ours[2]}

    def _release(self, fd: int) -> None:
        if fd in self.owned:
            self.owned.discard(fd)
            os.close(fd)

    async def _execute(self) -> int:
        tasks: list[asyncio.Task[None]] = []
        try:
            child, stdin_fd, outputs = self._channels()
            # A new session either way, so signals reach the whole process group. With a
            # pty, setsid(1) also makes it the controlling terminal: lxc-attach only
            # proxies a terminal that is its controlling one (and gets SIGWINCH from it).
            argv = [*CTTY_SESSION, *self.argv] if self.interactive else self.argv
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=child[0], stdout=child[1], stderr=child[2], cwd="/",
                    start_new_session=not self.interactive)
            except OSError as exc:
                raise ExecError(f"Failed to run the command: {exc}") from exc
            finally:
                for fd in set(child):
                    self._release(fd)
            pumps = [asyncio.create_task(self._pump(fd, name)) for name, fd in outputs.items()]
            tasks = [*pumps, asyncio.create_task(self._feed(stdin_fd))]
            await self.proc.wait()
            await self._drain(pumps)
            return exit_code(self.proc.returncode or 0)
        finally:
            self._signal(signal.SIGKILL)  # only if still running (cancelled, failed)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for fd in list(self.owned):
                self._release(fd)
            await self._close_outputs()

    async def _drain(self, pumps: list[asyncio.Task[None]]) -> None:
        """Wait for EOF on the outputs, unless they go quiet (a background child holds them)."""
        pending: set[asyncio.Task[None]] = set(pumps)
        while pending:
            before = self.activity
            _, pending = await asyncio.wait(pending, timeout=DRAIN_IDLE)
            if pending and self.activity == before:
                break
        for task in pumps:
            if task.done():
                task.result()  # a read error fails the operation

    async def _pump(self, fd: int, name: str) -> None:
        ws = self.sockets[name]
        while chunk := await read_fd(fd):
            self.activity += 1
            if not ws.closed:
                try:
                    await ws.send_bytes(chunk)
                except ConnectionError:
                    pass  # the client left; keep draining so the process is not blocked

    async def _feed(self, fd: int) -> None:
        """Copy queued stdin frames to the process, then close a pipe at EOF."""
        writable = True
        if self.interactive:
            await self._wait_raw(fd)
        while True:
            if self.eof and self.stdin.empty() and writable:
                self._release(fd)
                writable = False
            data = await self.stdin.get()
            if data is not None and writable:
                try:
                    await write_fd(fd, data)
                except OSError:
                    writable = False  # the process closed its stdin (EPIPE) or the pty is gone

    async def _wait_raw(self, fd: int) -> None:
        """Hold stdin until lxc-attach has put the terminal in raw mode (or RAW_WAIT).

        lxc-attach switches its terminal to raw mode with TCSAFLUSH when its proxy is
        ready, discarding input typed before: a client that sends at once would lose it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RAW_WAIT
        while loop.time() < deadline and self.proc is not None and self.proc.returncode is None:
            try:
                if not termios.tcgetattr(fd)[3] & termios.ICANON:
                    return
            except termios.error:
                return
            await asyncio.sleep(0.02)

    async def _close_outputs(self) -> None:
        """Close the output websockets and wait for the client's close frames (or timeout).

        The fd's reader is stopped first: with no concurrent ``receive()``, aiohttp's
        ``close()`` waits for the client's answer, i.e. until it has read all output.
        """
        names = [n for n in (("0",) if self.interactive else ("1", "2")) if n in self.sockets]
        self.closed_by_us.update(names)
        self.closers = {n: asyncio.create_task(self._close_acked(n)) for n in names}
        await asyncio.gather(*self.closers.values(), return_exceptions=True)

    async def _close_acked(self, name: str) -> None:
        if not self.gone:  # a client that left will not answer
            reader = self.readers[name]
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await self.sockets[name].close()
