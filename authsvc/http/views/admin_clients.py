"""The admin API for OAuth2 clients: register, list, rotate and retire secrets, disable,
enable, delete. Each needs the `admin` scope, from a user, a client or an API key; each
action is audited with the caller as its actor (auth/clients.py)."""

from __future__ import annotations

from aiohttp import web

from authsvc.appkeys import CLIENTS, PRINCIPAL, SETTINGS
from authsvc.auth.clients import ID_SHAPE
from authsvc.errors import NotFound
from authsvc.http.answers import json_response
from authsvc.http.bodies import read_json
from authsvc.http.middlewares import ANY, requires
from authsvc.http.schemas import ClientCreateSchema, client_json
from authsvc.http.views.common import TOKEN_HEADERS, client_address

routes = web.RouteTableDef()

create_schema = ClientCreateSchema()


def _client_id(request: web.Request) -> str:
    client_id = request.match_info["id"]
    if not ID_SHAPE.fullmatch(client_id):  # names no client: 404, as an unknown one
        raise NotFound("No such client.")
    return client_id


def _who(request: web.Request) -> tuple[str, str]:
    return request[PRINCIPAL].actor, client_address(request)


@routes.post("/admin/clients")
@requires("admin", subjects=ANY)
async def create_client(request: web.Request) -> web.Response:
    data = await read_json(request, create_schema)
    # The default lifetime: what a user's access token lives, within what a client's may.
    ttl = data.get("token_ttl", min(max(request.app[SETTINGS].access_token_ttl, 60), 86_400))
    client, secret = await request.app[CLIENTS].create(
        data["name"],
        data["scopes"],
        data["auth_method"],
        data.get("jwks"),
        data.get("jwks_uri"),
        ttl,
        *_who(request),
    )
    body = client_json(client)
    if secret is not None:
        body["client_secret"] = secret
    return json_response(body, status=201, headers=TOKEN_HEADERS)  # a secret: never cached


@routes.get("/admin/clients")
@requires("admin", subjects=ANY)
async def list_clients(request: web.Request) -> web.Response:
    return json_response([client_json(c) for c in await request.app[CLIENTS].list_all()])


@routes.post("/admin/clients/{id}/secrets")
@requires("admin", subjects=ANY)
async def rotate_secret(request: web.Request) -> web.Response:
    client_id = _client_id(request)
    secret = await request.app[CLIENTS].rotate(client_id, *_who(request))
    return json_response({"client_id": client_id, "client_secret": secret}, status=201, headers=TOKEN_HEADERS)


@routes.post("/admin/clients/{id}/secrets/retire")
@requires("admin", subjects=ANY)
async def retire_secrets(request: web.Request) -> web.Response:
    retired = await request.app[CLIENTS].retire(_client_id(request), *_who(request))
    return json_response({"retired": retired})


@routes.post("/admin/clients/{id}/disable")
@requires("admin", subjects=ANY)
async def disable_client(request: web.Request) -> web.Response:
    client = await request.app[CLIENTS].set_disabled(_client_id(request), True, *_who(request))
    return json_response(client_json(client))


@routes.post("/admin/clients/{id}/enable")
@requires("admin", subjects=ANY)
async def enable_client(request: web.Request) -> web.Response:
    client = await request.app[CLIENTS].set_disabled(_client_id(request), False, *_who(request))
    return json_response(client_json(client))


@routes.delete("/admin/clients/{id}")
@requires("admin", subjects=ANY)
async def delete_client(request: web.Request) -> web.Response:
    await request.app[CLIENTS].delete(_client_id(request), *_who(request))
    return web.Response(status=204)
