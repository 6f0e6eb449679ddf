"""Every typed failure of every package derives from ``CorralError`` and comes back
from the API in LXD's error envelope with its own code (``api/middleware.py`` maps the
root once): no package's error becomes a 500 "Internal error" for want of a handler."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import cluster
import node_agent
from cluster.api.middleware import error_middleware
from cluster.api.response import ApiError
from cluster.state.errors import NoQuorum, ReplicaDamaged, StateError
from corral_shared.errors import CorralError
from node_agent.drivers.base import DriverError
from node_agent.drivers.qemu.qmp import QmpError
from node_agent.images.errors import ImageError
from node_agent.network.errors import NetworkError
from node_agent.storage.errors import StorageError

ROOTS = (ApiError, StateError, DriverError, StorageError, NetworkError, ImageError)
# Errors whose constructor is not (message) or (code, message): a sample of each.
SAMPLES: dict[type[CorralError], CorralError] = {
    ApiError: ApiError(418, "short and stout"),
    QmpError: QmpError("cont", "GenericError", "no"),
    ReplicaDamaged: ReplicaDamaged("/x/journal", 12, "bad record"),
    NoQuorum: NoQuorum(1, 3),
}
SKIPPED = {"OutcomeUnknown"}  # answered with the operation that settles it: its own test


def _import_all() -> None:
    """Import every module of the packages, so every subclass is defined."""
    for package in (cluster, node_agent):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if ".cli" in info.name:
                continue
            importlib.import_module(info.name)


def _subclasses(cls: type[CorralError]) -> Iterator[type[CorralError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _sample(cls: type[CorralError]) -> CorralError:
    if cls in SAMPLES:
        return SAMPLES[cls]
    if issubclass(cls, ApiError):
        try:
            return cls(409, f"{cls.__name__} happened")  # type: ignore[call-arg]
        except TypeError:
            return cls(f"{cls.__name__} happened")  # type: ignore[call-arg, arg-type]
    return cls(f"{cls.__name__} happened")  # type: ignore[call-arg, arg-type]


def _all_errors() -> list[CorralError]:
    _import_all()
    found = {cls for cls in _subclasses(CorralError) if cls.__name__ not in SKIPPED
             and cls.__module__.split(".")[0] in ("cluster", "node_agent", "corral_shared")}
    return [_sample(cls) for cls in sorted(found, key=lambda c: c.__qualname__)]


def test_the_six_roots_derive_from_one() -> None:
    assert all(issubclass(root, CorralError) for root in ROOTS)
    assert StorageError("x", code=409).code == 409 and NetworkError("x").code == 400
    assert ImageError("x").code == 400 and DriverError("x").code == 500


@pytest.mark.parametrize("exc", _all_errors(), ids=lambda e: type(e).__qualname__)
async def test_every_error_comes_back_in_lxds_envelope_with_its_code(
        exc: CorralError, tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    app = web.Application(middlewares=[error_middleware()])
    app.router.add_get("/boom", handler)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/boom")
        body = await response.json()
    assert 400 <= exc.code < 600
    assert response.status == exc.code
    assert body == {"type": "error", "status": "", "status_code": 0, "operation": "",
                    "error_code": exc.code, "error": exc.message, "metadata": None}
