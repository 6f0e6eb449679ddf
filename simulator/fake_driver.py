"""A fake host driver for the scale simulator (``simulator.simulate``) only.

:class:`FakeDriver` runs nothing. It invents hosts (cluster members, with the capacity a
node agent would report in its heartbeats) and the instances users ask for, both
deterministically from a seed. The simulator uses it to load the scheduler and the
replicated state at scale; figures measured with it are about placement and Raft, and are
never to be used to claim anything about running containers or a real driver.

Hosts: 8-128 CPUs, 2, 4 or 8 GiB of memory per CPU (kept within 16-512 GiB), 200 GiB to
4 TiB of disk. Instances are containers; each limit is set independently, small values far
more often than large ones (each value half as likely as the one before):

* ``limits.cpu`` 1, 2, 4 or 8 on 7% of instances;
* ``limits.memory`` 256 MiB to 16 GiB on half of them;
* a root disk ``size`` of 1 GiB to 100 GiB on half of them;

about a quarter set none (containers without limits reserve the defaults of
``corral_shared.resources``). 1,000,000 such instances on 5,000 such hosts (Nomad's C1M)
reserve about 63% of the CPUs, 48% of the memory and 28% of the disk: they all fit.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from corral_shared.resources import GiB

CPUS = (8, 12, 16, 24, 32, 48, 64, 96, 128)
MEMORY_PER_CPU_GIB = (2, 4, 8)
MEMORY_GIB = (16, 512)  # smallest and largest host memory
DISK_GIB = (200, 400, 800, 1600, 3200, 4096)

CPU_SHARE, CPU_LIMITS = 0.07, ("1", "2", "4", "8")
MEMORY_SHARE = 0.5
MEMORY_LIMITS = ("256MiB", "512MiB", "1GiB", "2GiB", "4GiB", "8GiB", "16GiB")
DISK_SHARE = 0.5
DISK_SIZES = ("1GiB", "2GiB", "5GiB", "10GiB", "20GiB", "50GiB", "100GiB")

POOL = "default"  # the storage pool the simulated cluster is bootstrapped with


@dataclass(frozen=True, slots=True)
class SimMember:
    """A simulated host: what ``member.join`` needs, and the capacity it reports."""

    name: str
    address: str
    raft_address: str
    capacity: dict[str, float]
    architecture: str = "x86_64"


@dataclass(frozen=True, slots=True)
class SimInstance:
    """A container a simulated user asks for: its own config and devices (the cluster's
    ``default`` profile supplies the rest, as with ``lxc launch``)."""

    index: int
    name: str
    uid: str
    config: dict[str, str] = field(default_factory=dict)
    devices: dict[str, dict[str, str]] = field(default_factory=dict)


class _Halving:
    """Draws one of ``values``, each half as likely as the one before."""

    def __init__(self, values: tuple[str, ...]) -> None:
        self.values = values
        weights = [2.0 ** (len(values) - i) for i in range(len(values))]
        self.bounds = list(itertools.accumulate(w / sum(weights) for w in weights))[:-1]

    def draw(self, rng: random.Random) -> str:
        return self.values[bisect.bisect(self.bounds, rng.random())]


_CPU, _MEMORY, _DISK = _Halving(CPU_LIMITS), _Halving(MEMORY_LIMITS), _Halving(DISK_SIZES)


class FakeDriver:
    """Simulated hosts and instance requests, the same for the same seed.

    The simulator's stand-in for real hosts only: it starts nothing and never answers for a
    real driver's behaviour. Members and instances are drawn from separate random streams,
    so the instances asked for do not depend on the number of members.
    """

    name = "fake"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def members(self, count: int) -> list[SimMember]:
        """``count`` hosts named ``sim00000``, ``sim00001``, ... (at most 131,072)."""
        if not 0 < count <= 1 << 17:
            raise ValueError("the simulator makes 1 to 131,072 members")
        rng = random.Random(f"members-{self.seed}")
        return [self._member(i, rng) for i in range(count)]

    @staticmethod
    def _member(i: int, rng: random.Random) -> SimMember:
        cpu = rng.choice(CPUS)
        memory = min(max(cpu * rng.choice(MEMORY_PER_CPU_GIB), MEMORY_GIB[0]), MEMORY_GIB[1])
        disk = rng.choice(DISK_GIB)
        # Addresses in 198.18.0.0/15 (RFC 2544, benchmarking): never dialled.
        host = f"198.{18 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
        return SimMember(name=f"sim{i:05d}", address=f"{host}:8443",
                         raft_address=f"{host}:8444",
                         capacity={"cpu": float(cpu), "memory": float(memory * GiB),
                                   "disk": float(disk * GiB)})

    def instances(self, count: int) -> Iterator[SimInstance]:
        """``count`` container requests named ``c0000000``, ``c0000001``, ..., lazily."""
        rng = random.Random(f"instances-{self.seed}")
        for i in range(count):
            yield self._instance(i, self.seed, rng)

    @staticmethod
    def _instance(i: int, seed: int, rng: random.Random) -> SimInstance:
        config: dict[str, str] = {}
        devices: dict[str, dict[str, str]] = {}
        if rng.random() < CPU_SHARE:
            config["limits.cpu"] = _CPU.draw(rng)
        if rng.random() < MEMORY_SHARE:
            config["limits.memory"] = _MEMORY.draw(rng)
        if rng.random() < DISK_SHARE:
            devices["root"] = {"type": "disk", "path": "/", "pool": POOL,
                               "size": _DISK.draw(rng)}
        return SimInstance(index=i, name=f"c{i:07d}", uid=f"{seed & 0xffffffff:08x}{i:024x}",
                           config=config, devices=devices)
