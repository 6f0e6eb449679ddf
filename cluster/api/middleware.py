"""The one place where failures become LXD error responses."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from cluster.api.context import CTX
from cluster.api.response import ApiError, error
from cluster.state.errors import OutcomeUnknown, StateError
from node_agent.drivers.base import DriverError

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_middleware() -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error(exc.status, exc.message)
        except OutcomeUnknown as exc:
            ops = request.app[CTX].ops
            return error(exc.code, ops.explain_unknown(exc, f"{request.method} {request.path}"))
        except StateError as exc:
            return error(exc.code, str(exc))
        except DriverError as exc:
            return error(exc.code, str(exc))
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
