"""A person's API keys (/users/me/api-keys), and an admin's view of anyone's."""

from __future__ import annotations

import uuid

from aiohttp import web

from authsvc.appkeys import API_KEYS, CURRENT_USER, PRINCIPAL
from authsvc.errors import NotFound
from authsvc.http.answers import json_response
from authsvc.http.bodies import read_json
from authsvc.http.middlewares import ANY, SESSION, requires
from authsvc.http.schemas import ApiKeyCreateSchema, api_key_json
from authsvc.http.views.common import client_address, path_id

routes = web.RouteTableDef()

create_schema = ApiKeyCreateSchema()


def _key_id(request: web.Request) -> uuid.UUID:
    # A malformed id names no key: 404, like another user's key.
    try:
        return uuid.UUID(request.match_info["key_id"])
    except ValueError:
        raise NotFound("No such API key.") from None


# A key cannot make, list or delete keys (SESSION): one leaked key must not become many.


@routes.post("/users/me/api-keys")
@requires("profile", subjects=SESSION)
async def create_key(request: web.Request) -> web.Response:
    data = await read_json(request, create_schema)
    row, key = await request.app[API_KEYS].create(
        request[CURRENT_USER], data["name"], data["scopes"], data.get("expires_in"), within=request[PRINCIPAL].scopes
    )
    location = f"/users/me/api-keys/{row.id}"
    return json_response({**api_key_json(row), "key": key}, status=201, headers={"Location": location})


@routes.get("/users/me/api-keys")
@requires("profile", subjects=SESSION)
async def list_keys(request: web.Request) -> web.Response:
    keys = await request.app[API_KEYS].list(request[CURRENT_USER].id)
    return json_response([api_key_json(key) for key in keys or ()])


@routes.delete("/users/me/api-keys/{key_id}")
@requires("profile", subjects=SESSION)
async def delete_key(request: web.Request) -> web.Response:
    if not await request.app[API_KEYS].delete(request[CURRENT_USER].id, _key_id(request)):
        raise NotFound("No such API key.")
    return web.Response(status=204)


@routes.get("/admin/users/{id}/api-keys")
@requires("admin", subjects=ANY)
async def admin_list_keys(request: web.Request) -> web.Response:
    keys = await request.app[API_KEYS].list(path_id(request, "user"))
    if keys is None:
        raise NotFound("No such user.")
    return json_response([api_key_json(key) for key in keys])


@routes.delete("/admin/users/{id}/api-keys/{key_id}")
@requires("admin", subjects=ANY)
async def admin_delete_key(request: web.Request) -> web.Response:
    deleted = await request.app[API_KEYS].delete(
        path_id(request, "user"), _key_id(request), actor=request[PRINCIPAL].actor, address=client_address(request)
    )
    if not deleted:
        raise NotFound("No such API key.")
    return web.Response(status=204)
