from __future__ import annotations

from aiohttp import web

from authsvc.appkeys import ACCOUNTS, CURRENT_SESSION, CURRENT_USER, POOL, SIGNUPS
from authsvc.db.repo import users
from authsvc.errors import InvalidToken
from authsvc.http.answers import json_response
from authsvc.http.bodies import read_json
from authsvc.http.middlewares import SESSION, public, requires
from authsvc.http.schemas import (
    PasswordChangeSchema,
    SignupSchema,
    UserPatchSchema,
    user_json,
)
from authsvc.http.views.common import client_address

routes = web.RouteTableDef()

signup_schema = SignupSchema()
patch_schema = UserPatchSchema()
password_schema = PasswordChangeSchema()


@routes.post("/users")
@public
async def signup(request: web.Request) -> web.Response:
    address = client_address(request)
    request.app[SIGNUPS].refuse_from_memory(address)  # an address past its budget: before the body
    data = await read_json(request, signup_schema)
    user = await request.app[ACCOUNTS].signup(
        data["email"],
        data["password"],
        data.get("first_name"),
        data.get("last_name"),
        address,
    )
    return json_response(user_json(user), status=201, headers={"Location": "/users/me"})


@routes.get("/users/me")
@requires("profile")
async def me(request: web.Request) -> web.Response:
    return json_response(user_json(request[CURRENT_USER]))


@routes.patch("/users/me")
@requires("profile")
async def update_me(request: web.Request) -> web.Response:
    changes = await read_json(request, patch_schema)
    user = request[CURRENT_USER]
    if changes:
        async with request.app[POOL].acquire() as conn:
            user = await users.update_names(conn, user.id, changes)
        if user is None:  # deleted meanwhile
            raise InvalidToken()
    return json_response(user_json(user))


@routes.post("/users/me/password")
@requires(subjects=SESSION)
async def change_password(request: web.Request) -> web.Response:
    data = await read_json(request, password_schema)
    await request.app[ACCOUNTS].change_password(
        request[CURRENT_USER],
        request[CURRENT_SESSION],
        data["current_password"],
        data["new_password"],
        client_address(request),
    )
    return web.Response(status=204)


@routes.delete("/users/me")
@requires(subjects=SESSION)
async def delete_me(request: web.Request) -> web.Response:
    await request.app[ACCOUNTS].delete(request[CURRENT_USER])
    return web.Response(status=204)
