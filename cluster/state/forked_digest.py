"""A replica's digest at a marker, computed in a forked child off the Raft thread.

A ``replica.mark`` is digested while it is applied, in pysyncobj's tick thread under
the replica lock, so that every replica digests the state after the same log prefix
(digest.py). That costs about 55 µs per instance: a minute at a million instances, all
of it with Raft's heartbeats unsent and every reader locked out. A child forked at that
moment sees the state exactly as it was (copy-on-write, as ``dumps.py`` writes dumps),
digests it at the lowest CPU priority while Raft goes on, and writes the 64 hex digits
to a pipe that the replica reads when someone asks for the marker. Like the dump child,
it closes every inherited descriptor but its pipe first, and never logs or locks.

Small states are digested in place (``FORK_FROM_INSTANCES``): below that a fork costs
more than the digest, and tests and dev clusters keep a digest ready at once.
"""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Callable

from cluster.state.model import State

FORK_FROM_INSTANCES = 5_000  # ~0.3 s of digest in place; a fork is a few ms
DIGEST_CHARS = 64  # hex digits of a 32-byte BLAKE2b digest


class ForkedDigest:
    """The digest of ``state`` as of now, computed by a forked child. ``poll`` returns
    None until the child is done, then the digest (or ``"error: ..."``)."""

    def __init__(self, state: State, digest: Callable[[State], str]) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: nothing here may log, lock or return
            status = 1
            try:
                os.closerange(3, read_end if read_end < write_end else write_end)
                os.closerange(max(read_end, write_end) + 1, os.sysconf("SC_OPEN_MAX"))
                os.close(read_end)
                os.nice(19)
                gc.disable()
                os.write(write_end, digest(state).encode("ascii"))
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        os.set_blocking(read_end, False)
        self._fd, self._pid = read_end, pid
        self._read = b""
        self.result: str | None = None

    def poll(self) -> str | None:
        if self.result is not None:
            return self.result
        try:
            while chunk := os.read(self._fd, DIGEST_CHARS):
                self._read += chunk
        except BlockingIOError:
            return None  # still digesting
        self._finish()
        return self.result

    def _finish(self) -> None:
        """The pipe is at its end: the child wrote everything it will."""
        os.close(self._fd)
        try:
            _, status = os.waitpid(self._pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = 0 if len(self._read) == DIGEST_CHARS else -1
        if code == 0 and len(self._read) == DIGEST_CHARS:
            self.result = self._read.decode("ascii")
        else:
            self.result = f"error: the digest child exited with {code}"

    def abandon(self) -> None:
        """Forget a digest nobody will read: stop its child and reap it (no zombie)."""
        if self.result is None:
            os.close(self._fd)
            try:
                os.kill(self._pid, signal.SIGKILL)
                os.waitpid(self._pid, 0)
            except (ChildProcessError, ProcessLookupError):
                pass
            self.result = "error: abandoned"
