"""The OAuth2 endpoints: the token endpoint (RFC 6749: password grant 4.3, refresh 6),
introspection (RFC 7662, behind a service credential) and revocation (RFC 7009)."""

from __future__ import annotations

import base64
import hmac

from aiohttp import web
from marshmallow import ValidationError

from authsvc.appkeys import API_KEYS, CREDENTIALS, SCOPES, SESSIONS, SETTINGS
from authsvc.auth.api_keys import looks_like_api_key
from authsvc.errors import (
    ClientUnauthorized,
    InvalidBody,
    InvalidCredentials,
    InvalidScope,
    NotFound,
    OAuthError,
)
from authsvc.http.answers import json_response
from authsvc.http.bodies import read_body
from authsvc.http.middlewares import public
from authsvc.http.schemas import (
    Form,
    RefreshGrantSchema,
    TokenFormSchema,
    TokenGrantSchema,
)
from authsvc.http.views.common import TOKEN_HEADERS, client_address, tokens_response

routes = web.RouteTableDef()

FORM = "application/x-www-form-urlencoded"

grant_schema = TokenGrantSchema()
refresh_grant_schema = RefreshGrantSchema()
token_form_schema = TokenFormSchema()


async def _read_form(request: web.Request) -> dict[str, str]:
    if request.content_type != FORM:
        raise OAuthError("invalid_request", f"Send the parameters as {FORM}.")
    try:
        await read_body(request)  # bounded in time; request.post() then parses the bytes read
    except InvalidBody as exc:
        error = OAuthError("invalid_request", exc.message)
        error.close_connection = exc.close_connection
        raise error from None
    try:
        form = await request.post()
    except (UnicodeDecodeError, LookupError, ValueError):
        raise OAuthError("invalid_request", "The form is not valid UTF-8.") from None
    repeated = sorted({key for key in form if len(form.getall(key)) > 1})
    if repeated:  # RFC 6749 3.2
        raise OAuthError("invalid_request", f"Parameter {repeated[0]} is given more than once.")
    return {key: value for key, value in form.items() if isinstance(value, str)}


def _load_form(schema: Form, form: dict[str, str]) -> dict[str, str]:
    try:
        return schema.load(form)
    except ValidationError as exc:
        field = sorted(exc.normalized_messages())[0]
        raise OAuthError("invalid_request", f"{field} is missing or not valid.") from None


@routes.post("/auth/token")
@public
async def token(request: web.Request) -> web.Response:
    """The OAuth2 token endpoint: password grant (RFC 6749 4.3) and refresh (section 6)."""
    try:
        return await _token(request)
    except InvalidScope as exc:
        raise OAuthError("invalid_scope", exc.message) from None


async def _token(request: web.Request) -> web.Response:
    form = await _read_form(request)
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required.")
    if grant_type == "refresh_token":
        refresh_token = _load_form(refresh_grant_schema, form)["refresh_token"]
        return tokens_response(await request.app[SESSIONS].refresh(refresh_token))
    if grant_type != "password" or not request.app[SETTINGS].password_grant:
        raise OAuthError("unsupported_grant_type", f"grant_type={grant_type} is not supported here.")
    data = _load_form(grant_schema, form)
    requested = request.app[SCOPES].parse(data.get("scope"))
    try:
        user = await request.app[CREDENTIALS].authenticate(data["username"], data["password"], client_address(request))
    except InvalidCredentials:
        raise OAuthError("invalid_grant", InvalidCredentials.message) from None
    return tokens_response(await request.app[SESSIONS].start(user, requested))


def _check_service_credential(request: web.Request) -> None:
    """HTTP Basic with one of AUTHSVC_INTROSPECTION_CLIENTS, compared in constant time."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        raise ClientUnauthorized()
    try:
        client_id, sep, secret = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except ValueError:  # not base64, not ASCII, not UTF-8 (binascii.Error and UnicodeDecodeError are ValueErrors)
        raise ClientUnauthorized() from None
    matched = False
    for known_id, known_secret in request.app[SETTINGS].introspection_clients:
        # Every entry is compared, so timing does not tell which ids exist.
        same = hmac.compare_digest(client_id.encode(), known_id.encode())
        matched |= same & hmac.compare_digest(secret.encode(), known_secret.encode())
    if not sep or not matched:
        raise ClientUnauthorized()


@routes.post("/auth/introspect")
@public  # authenticated by a service credential, not a bearer token
async def introspect(request: web.Request) -> web.Response:
    """RFC 7662 token introspection, for services that need revocation at once."""
    if not request.app[SETTINGS].introspection_clients:
        raise NotFound()
    _check_service_credential(request)
    form = await _read_form(request)
    token = _load_form(token_form_schema, form)["token"]
    service = request.app[API_KEYS] if looks_like_api_key(token) else request.app[SESSIONS]
    return json_response(await service.introspect(token), headers=TOKEN_HEADERS)


@routes.post("/auth/revoke")
@public  # holding the token is the proof (RFC 7009 for public clients)
async def revoke(request: web.Request) -> web.Response:
    """RFC 7009: 200 whether or not the token was known."""
    form = await _read_form(request)
    await request.app[SESSIONS].revoke_token(_load_form(token_form_schema, form)["token"])
    return web.Response(status=200, headers=TOKEN_HEADERS)
