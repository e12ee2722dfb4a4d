from __future__ import annotations

import asyncio

from aiohttp import web
from marshmallow import ValidationError

from ..bodies import read_json
from ..credentials import authenticate
from ..errors import InvalidBody, InvalidCredentials, NotFound, OAuthError, RequestTimeout
from ..keys import SETTINGS, TOKENS
from ..middlewares import public
from ..schemas import LoginSchema, TokenGrantSchema
from .common import client_address

routes = web.RouteTableDef()

# RFC 6749 5.1: token responses must not be cached.
TOKEN_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FORM = "application/x-www-form-urlencoded"

login_schema = LoginSchema()
grant_schema = TokenGrantSchema()


def _token_response(request: web.Request, user_id: int) -> web.Response:
    return web.json_response(request.app[TOKENS].issue(user_id).body(), headers=TOKEN_HEADERS)


@routes.post("/auth")
@public
async def login(request: web.Request) -> web.Response:
    data = await read_json(request, login_schema)
    identifier = data.get("username", data.get("email"))
    user = await authenticate(request.app, identifier, data["password"], client_address(request))
    return _token_response(request, user.id)


async def _read_form(request: web.Request) -> dict[str, str]:
    if request.content_type != FORM:
        raise OAuthError("invalid_request", f"Send the parameters as {FORM}.")
    try:
        async with asyncio.timeout(request.app[SETTINGS].idle_timeout):
            form = await request.post()
    except TimeoutError:
        raise RequestTimeout() from None
    except web.RequestPayloadError:
        raise OAuthError("invalid_request", InvalidBody.message) from None
    except (UnicodeDecodeError, LookupError, ValueError):
        raise OAuthError("invalid_request", "The form is not valid UTF-8.") from None
    repeated = sorted({key for key in form if len(form.getall(key)) > 1})
    if repeated:  # RFC 6749 3.2
        raise OAuthError("invalid_request", f"Parameter {repeated[0]} is given more than once.")
    return {key: value for key, value in form.items() if isinstance(value, str)}


@routes.post("/auth/token")
@public
async def token(request: web.Request) -> web.Response:
    """The OAuth2 resource owner password grant (RFC 6749 4.3)."""
    if not request.app[SETTINGS].password_grant:
        raise NotFound()
    form = await _read_form(request)
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required.")
    if grant_type != "password":
        raise OAuthError("unsupported_grant_type", "Only grant_type=password is supported here.")
    try:
        data = grant_schema.load(form)
    except ValidationError as exc:
        field = sorted(exc.normalized_messages())[0]
        raise OAuthError("invalid_request", f"{field} is missing or not valid.") from None
    try:
        user = await authenticate(request.app, data["username"], data["password"], client_address(request))
    except InvalidCredentials:
        raise OAuthError("invalid_grant", InvalidCredentials.message) from None
    return _token_response(request, user.id)
