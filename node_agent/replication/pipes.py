"""Carry a stream between a blocking pool call that writes or reads a file descriptor
(``BtrfsPool.send``/``receive``, run in a worker thread) and async byte chunks.

The pipe's loop end is an asyncio pipe transport, never a blocking read or write in a
thread, so it can be closed at any moment without racing a thread still using the fd.
Closing it is how the other side is stopped: a writer gets EPIPE, a reader an early
EOF; the pool call then fails and removes what it made, and is always awaited before
these return, so nothing runs on behind the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from node_agent.storage.errors import StorageError

T = TypeVar("T")
CHUNK = 1 << 20


async def pump_from(produce: Callable[[int], T],
                    write: Callable[[bytes], Awaitable[None]]) -> T:
    """Run ``produce(fd)`` in a thread and pass what it writes to ``fd`` to ``write``;
    its result. If ``write`` fails or the caller is cancelled, ``produce`` is stopped
    (EPIPE) and awaited, and that error is raised."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe()

    def run() -> T:
        try:
            return produce(w)
        finally:
            os.close(w)

    reader = asyncio.StreamReader(limit=CHUNK)
    pipe = os.fdopen(r, "rb", 0)  # owns r from here
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe)
    except BaseException:
        pipe.close()  # idempotent: a transport that was made has closed it already
        os.close(w)
        raise
    task = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        while chunk := await reader.read(CHUNK):
            await write(chunk)
    except BaseException:
        transport.close()
        await _settle(task)
        raise
    transport.close()
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await _settle(task)
        raise


class _Drain(asyncio.Protocol):
    """Flow control of a write pipe: ``wait()`` returns once the pipe can take more, and
    raises once the reader has gone."""

    def __init__(self) -> None:
        self._ready = asyncio.Event()
        self._ready.set()
        self._lost: BaseException | None = None

    def pause_writing(self) -> None:
        self._ready.clear()

    def resume_writing(self) -> None:
        self._ready.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or BrokenPipeError("the reader closed the pipe")
        self._ready.set()

    async def wait(self) -> None:
        await self._ready.wait()
        if self._lost is not None:
            raise self._lost


async def pump_into(consume: Callable[[int], T], chunks: AsyncIterator[bytes]) -> T:
    """Run ``consume(fd)`` in a thread, feeding it ``chunks`` through ``fd``, then end
    of file; its result, once the chunks are exhausted too. If the chunks raise (a cut
    stream) or the caller is cancelled, the pipe is closed early, ``consume`` is awaited
    (it sees a cut stream and fails) and that error is raised. If ``consume`` stops
    reading first, its own error is raised; if it stopped with success, the rest of the
    chunks must hold no more data (StorageError), so an error they raise (no end mark)
    is still seen. The caller undoes what a successful ``consume`` made when this raises.
    """
    loop = asyncio.get_running_loop()
    r, w = os.pipe()

    def run() -> T:
        try:
            return consume(r)
        finally:
            os.close(r)

    pipe = os.fdopen(w, "wb", 0)  # owns w from here
    try:
        transport, drain = await loop.connect_write_pipe(_Drain, pipe)
    except BaseException:
        pipe.close()  # idempotent: a transport that was made has closed it already
        os.close(r)
        raise
    task = asyncio.ensure_future(asyncio.to_thread(run))
    stopped = False
    try:
        async for chunk in chunks:
            if stopped:
                if chunk:
                    raise StorageError("the receiver stopped before the end of the stream")
                continue
            try:
                await drain.wait()
            except (BrokenPipeError, ConnectionResetError):
                stopped = True
                await asyncio.shield(task)  # raises the receiver's own error
                if chunk:
                    raise StorageError("the receiver stopped before the end of the "
                                       "stream") from None
                continue
            transport.write(chunk)
        if not stopped:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await drain.wait()
    except BaseException:
        transport.abort()
        await _settle(task)
        raise
    transport.close()
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await _settle(task)
        raise


async def _settle(task: asyncio.Future[T]) -> None:
    """Wait for a pool call stopped on our side; its own error is ours, not news."""
    with contextlib.suppress(BaseException):
        await asyncio.shield(task)

