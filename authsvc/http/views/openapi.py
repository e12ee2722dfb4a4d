from __future__ import annotations

from aiohttp import web

from authsvc.appkeys import OPENAPI
from authsvc.http.middlewares import public

routes = web.RouteTableDef()


@routes.get("/openapi.json")
@public
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document (authsvc/openapi.py), built once when the app is created."""
    return web.Response(
        body=request.app[OPENAPI], content_type="application/json", headers={"Cache-Control": "public, max-age=300"}
    )
