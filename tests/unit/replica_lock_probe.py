"""An instrumented replica lock, for tests and benches that ask how long apply waits
for readers: it records how long every acquire by a thread other than the event
loop's (pysyncobj's tick thread applying commands) waited, and which hold each
acquire is (so a test can count what a reader did inside one hold)."""

from __future__ import annotations

import threading
import time
import uuid
from types import TracebackType

from cluster.state.commands import command
from cluster.state.raft import RaftStore


class ProbedLock:
    """A ``threading.Lock`` that measures apply's waits; a drop-in for ``_Replica.lock``."""

    def __init__(self, reader_thread: int) -> None:
        self._lock = threading.Lock()
        self._reader_thread = reader_thread
        self.apply_waits: list[float] = []  # s, each acquire by another thread
        self.hold = 0  # incremented at every acquire
        self.held = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        started = time.perf_counter()
        got = self._lock.acquire(blocking, timeout)
        if got:
            if threading.get_ident() != self._reader_thread:
                self.apply_waits.append(time.perf_counter() - started)
            self.hold += 1
            self.held = True
        return got

    def release(self) -> None:
        self.held = False
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def locked(self) -> bool:
        return self._lock.locked()


def probe(store: RaftStore, reader_thread: int) -> ProbedLock:
    """Put a ``ProbedLock`` in place of ``store``'s replica lock (while nothing holds it)."""
    lock = ProbedLock(reader_thread)
    store._replica.lock = lock  # type: ignore[assignment]
    return lock


async def add_instances(store: RaftStore, count: int, member: str, image: str,
                        prefix: str = "i") -> None:
    """``count`` stopped instance records on ``member`` (``instance.create_many``), with
    room made for them (a reported capacity of 1 PiB of disk)."""
    await store.submit(command("member.heartbeat", name=member,
                               capacity={"cpu": 4096, "memory": 2.0**50, "disk": 2.0**50}))
    for start in range(0, count, 1000):
        items = [{"uid": uuid.uuid4().hex, "name": f"{prefix}{n}", "image": image,
                  "location": member, "type": "container", "architecture": "x86_64",
                  "profiles": ["default"], "config": {"user.n": str(n)}}
                 for n in range(start, min(count, start + 1000))]
        results = await store.submit(command("instance.create_many", items=items), timeout=60)
        bad = [r for r in results if not r.ok]
        assert not bad, bad[:3]


class Applier(threading.Thread):
    """Commands submitted from a thread of their own, one after another, as peers' and
    agents' commands reach a leader whatever its event loop is busy with."""

    def __init__(self, store: RaftStore, member: str) -> None:
        super().__init__(name="applier", daemon=True)
        self._store, self._member = store, member
        self._halt = threading.Event()
        self.applied = 0

    def run(self) -> None:
        while not self._halt.is_set():
            done = threading.Event()
            self._store._replica.apply_command(command("member.heartbeat", name=self._member),
                                               callback=lambda *_, d=done: d.set())
            done.wait(5)
            self.applied += 1
            time.sleep(0.001)

    def __enter__(self) -> Applier:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join(10)
