"""The outermost middleware: request id, one access log line and the request metrics.

It sits outside errors_to_json, so it sees the status the client really gets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time

from aiohttp import web

from authsvc.appkeys import CURRENT_USER, METRICS, REQUEST_ID, SETTINGS
from authsvc.http.addresses import client_address
from authsvc.http.middlewares import CLIENT_GONE, Handler
from authsvc.observability import logs
from authsvc.observability.metrics import UNMATCHED

access_log = logging.getLogger("authsvc.access")

HEADER = "X-Request-ID"
# Ids from a proxy or client are kept when they look like ids: short, plain characters,
# and nowhere shaped like one of our tokens (a client must not get those into our logs).
SANE_ID = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")


def request_id(given: str | None) -> str:
    if given is not None and SANE_ID.fullmatch(given) and not logs.TOKEN_SHAPED.search(given):
        return given
    return os.urandom(16).hex()  # as random as uuid4().hex, for a fraction of its cost


def route_of(request: web.Request) -> str:
    """The matched route's template (`/todos/{id}`), never the raw path."""
    resource = request.match_info.route.resource
    if resource is None or request.match_info.http_exception is not None:
        return UNMATCHED
    return resource.canonical


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request_id(request.headers.get(HEADER))
    request[REQUEST_ID] = rid
    ctx = logs.RequestContext(rid)
    token = logs.current.set(ctx)
    started = time.perf_counter()
    status = 500  # what aiohttp answers for an exception that gets past us
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects; errors_to_json turns the rest into JSON
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_GONE  # the client went away first
        raise
    finally:
        seconds = time.perf_counter() - started
        route = route_of(request)
        request.app[METRICS].request(route, request.method, status, seconds)
        if access_log.isEnabledFor(logging.INFO) and _logged(status, request.app[SETTINGS].access_log_successes):
            _access_line(request, route, status, seconds, ctx)
        logs.current.reset(token)


def _logged(status: int, successes: float) -> bool:
    """Every refused or failed request; successes sampled (AUTHSVC_ACCESS_LOG_SUCCESSES)."""
    return status >= 400 or successes >= 1 or (successes > 0 and random.random() < successes)


def _access_line(request: web.Request, route: str, status: int, seconds: float, ctx: logs.RequestContext) -> None:
    user = request.get(CURRENT_USER)
    access_log.info(
        "%s %s %s",
        request.method,
        route,
        status,
        extra={
            "method": request.method,
            "route": route,
            "path": logs.client_text(request.path),  # never the query string: it may carry a token
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "remote": client_address(
                request.remote,
                request.headers.getall("X-Forwarded-For", []),
                request.app[SETTINGS].trusted_proxies,
            ),
            "user_id": user.id if user is not None else ctx.user_id,
        },
    )


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, errors and aiohttp's own answers included."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers[HEADER] = rid
