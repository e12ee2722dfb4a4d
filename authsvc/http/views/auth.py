"""The JSON login of other services and front ends: POST /auth, /auth/refresh, /auth/logout.
The OAuth2 endpoints (RFC 6749 token, 7662 introspection, 7009 revocation) are in oauth.py."""

from __future__ import annotations

from aiohttp import web

from authsvc.appkeys import (
    CLIENTS,
    CREDENTIALS,
    CURRENT_SESSION,
    CURRENT_USER,
    SCOPES,
    SESSIONS,
)
from authsvc.errors import ClientUnauthorized, InvalidClient
from authsvc.http.bodies import load, read_json, read_json_value, read_query
from authsvc.http.middlewares import SESSION, public, requires
from authsvc.http.schemas import (
    ClientLoginSchema,
    LoginSchema,
    LogoutQuery,
    RefreshSchema,
)
from authsvc.http.views.common import client_address, tokens_response

routes = web.RouteTableDef()


login_schema = LoginSchema()
client_login_schema = ClientLoginSchema()
refresh_schema = RefreshSchema()
logout_query = LogoutQuery()


@routes.post("/auth")
@public
async def login(request: web.Request) -> web.Response:
    """A user's login; or, with client_id and client_secret, a client's own token."""
    body = await read_json_value(request)
    if isinstance(body, dict) and "client_id" in body:
        return await _client_login(request, load(client_login_schema, body))
    data = load(login_schema, body)
    requested = request.app[SCOPES].parse(data.get("scope"))  # bad input: before any attempt
    identifier = data.get("username", data.get("email"))
    user = await request.app[CREDENTIALS].authenticate(identifier, data["password"], client_address(request))
    return tokens_response(await request.app[SESSIONS].start(user, requested))


async def _client_login(request: web.Request, data: dict[str, str]) -> web.Response:
    requested = request.app[SCOPES].parse(data.get("scope"))  # bad input: before any attempt
    clients = request.app[CLIENTS]
    try:
        client = await clients.authenticate_secret(data["client_id"], data["client_secret"], client_address(request))
    except InvalidClient:
        raise ClientUnauthorized() from None  # this route's errors are {error, message}, not RFC 6749's

    return tokens_response(clients.issue(client, requested))


@routes.post("/auth/refresh")
@public
async def refresh(request: web.Request) -> web.Response:
    data = await read_json(request, refresh_schema)
    return tokens_response(await request.app[SESSIONS].refresh(data["refresh_token"]))


@routes.post("/auth/logout")
@requires(subjects=SESSION)
async def logout(request: web.Request) -> web.Response:
    """End this session, or with ?scope=all every session of the user."""
    query = read_query(request, logout_query)
    if query["scope"] == "all":
        await request.app[SESSIONS].end_all(request[CURRENT_USER].id, "logout_all")
    else:
        await request.app[SESSIONS].end(request[CURRENT_SESSION], "logout")
    return web.Response(status=204)


