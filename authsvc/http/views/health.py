from __future__ import annotations

import asyncio

from aiohttp import web

from authsvc.appkeys import POOL
from authsvc.db.pool import UNAVAILABLE_ERRORS
from authsvc.errors import Unavailable
from authsvc.http.answers import json_response
from authsvc.http.middlewares import public

routes = web.RouteTableDef()

READY_TIMEOUT = 2.0


@routes.get("/healthz")
@public
async def healthz(request: web.Request) -> web.Response:
    """The process is up and its event loop answers."""
    return json_response({"status": "ok"})


@routes.get("/readyz")
@public
async def readyz(request: web.Request) -> web.Response:
    """The database answers: send traffic here."""
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            async with request.app[POOL].acquire() as conn:
                await conn.fetchval("SELECT 1")
    except (TimeoutError, *UNAVAILABLE_ERRORS):
        raise Unavailable() from None
    return json_response({"status": "ready"})
