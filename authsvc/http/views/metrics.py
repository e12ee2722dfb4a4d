from __future__ import annotations

import asyncio

from aiohttp import web

from authsvc.appkeys import METRICS, SETTINGS
from authsvc.errors import Busy
from authsvc.http.middlewares import public
from authsvc.observability.metrics import MetricsUnreadable, allowed

routes = web.RouteTableDef()


@routes.get("/metrics")
@public
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format, for the networks in AUTHSVC_METRICS_NETWORKS only."""
    # The direct peer, not X-Forwarded-For: a proxy in front must not pass /metrics on at all.
    if not allowed(request.remote, request.app[SETTINGS].metrics_networks):
        raise web.HTTPNotFound()  # the same answer as for a route that does not exist
    collected = request.app[METRICS]
    collected.sample(request.app)  # this worker's gauges as of now
    try:
        body, content_type = await asyncio.to_thread(collected.exposition, request.headers.get("Accept", ""))
    except MetricsUnreadable:
        raise Busy() from None  # a worker is starting: the next scrape reads it
    return web.Response(body=body, headers={"Content-Type": content_type})
