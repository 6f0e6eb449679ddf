"""The one place where failures become LXD error responses."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from cluster.api.context import CTX
from cluster.api.response import error
from cluster.state.errors import OutcomeUnknown
from corral_shared.errors import CorralError

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_middleware() -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except OutcomeUnknown as exc:  # answered with the operation that settles it
            ops = request.app[CTX].ops
            return error(exc.code, ops.explain_unknown(exc, f"{request.method} {request.path}"))
        except CorralError as exc:  # every package's typed failure, by its code
            return error(exc.code, exc.message)
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"Request body too large (limit {request.client_max_size} bytes)")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error(exc.status, exc.reason)
        except Exception as exc:  # noqa: BLE001 - every failure gets LXD's envelope
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error(500, f"Internal error: {exc}")

    return middleware
