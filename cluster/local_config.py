"""``$CORRAL_DIR/cluster.yaml``: the few facts a member keeps outside the replicated
state: its own name, its Raft address, the Raft addresses of the other members (to
find them again after a restart), whether Raft traffic is encrypted (clustered), and the
member-local server settings (``core.https_address``), which LXD also keeps per member."""

from __future__ import annotations

import asyncio
import copy
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml


@dataclass
class LocalConfig:
    member: str
    raft_address: str
    partners: list[str] = field(default_factory=list)
    clustered: bool = False
    voter: bool = True
    config: dict[str, str] = field(default_factory=dict)  # member-local server keys


def _free_loopback_port() -> int:
    """A port the kernel hands out for a bind on loopback (a bind, never a connect)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def save(path: Path, config: LocalConfig) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(asdict(config)))
    tmp.replace(path)


async def save_async(path: Path, config: LocalConfig) -> None:
    """``save`` off the event loop, of a copy taken now (later edits wait for the next save)."""
    await asyncio.to_thread(save, path, copy.deepcopy(config))


def load_or_create(path: Path) -> LocalConfig:
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
        return LocalConfig(member=str(data["member"]), raft_address=str(data["raft_address"]),
                           partners=[str(p) for p in data.get("partners") or []],
                           clustered=bool(data.get("clustered", False)),
                           voter=bool(data.get("voter", True)),
                           config={str(k): str(v) for k, v in
                                   (data.get("config") or {}).items()})
    config = LocalConfig(member=socket.gethostname().split(".")[0] or "corral",
                         raft_address=f"127.0.0.1:{_free_loopback_port()}")
    save(path, config)
    return config
