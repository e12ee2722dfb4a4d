"""The OAuth2 endpoints: the token endpoint (RFC 6749: password grant 4.3, client
credentials 4.4, refresh 6), introspection (RFC 7662, behind a client credential) and
revocation (RFC 7009)."""

from __future__ import annotations

import base64
import hmac
import urllib.parse

from aiohttp import web
from marshmallow import ValidationError

from authsvc.appkeys import API_KEYS, CLIENTS, CREDENTIALS, SCOPES, SESSIONS, SETTINGS
from authsvc.auth.api_keys import looks_like_api_key
from authsvc.auth.principal import CLIENT
from authsvc.errors import (
    ClientUnauthorized,
    InsufficientScope,
    InvalidBody,
    InvalidClient,
    InvalidCredentials,
    InvalidScope,
    InvalidToken,
    OAuthError,
)
from authsvc.http.answers import json_response
from authsvc.http.bodies import read_body
from authsvc.http.middlewares import public
from authsvc.http.schemas import (
    ClientCredentialsGrantSchema,
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
client_grant_schema = ClientCredentialsGrantSchema()
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
    """The OAuth2 token endpoint: password grant (RFC 6749 4.3), client credentials (4.4) and
    refresh (section 6)."""
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
    if grant_type == "client_credentials":
        return await _client_credentials(request, _load_form(client_grant_schema, form))
    if grant_type != "password" or not request.app[SETTINGS].password_grant:
        raise OAuthError("unsupported_grant_type", f"grant_type={grant_type} is not supported here.")
    data = _load_form(grant_schema, form)
    requested = request.app[SCOPES].parse(data.get("scope"))
    try:
        user = await request.app[CREDENTIALS].authenticate(data["username"], data["password"], client_address(request))
    except InvalidCredentials:
        raise OAuthError("invalid_grant", InvalidCredentials.message) from None
    return tokens_response(await request.app[SESSIONS].start(user, requested))


def _basic_pair(request: web.Request) -> tuple[str, str] | None:
    """The (id, secret) of `Authorization: Basic`, as sent; None without that header.
    ValueError when it is not base64 of UTF-8 `id:secret`."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    # Not base64, not ASCII, not UTF-8: binascii.Error and UnicodeDecodeError are ValueErrors.
    client_id, sep, secret = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    if not sep:
        raise ValueError("no colon")
    return client_id, secret


def _basic_client(request: web.Request) -> tuple[str, str] | None:
    """client_secret_basic: RFC 6749 2.3.1 form-urlencodes the id and the secret first."""
    try:
        pair = _basic_pair(request)
    except ValueError:
        raise InvalidClient("The Basic credential is not base64 of client_id:client_secret.") from None
    if pair is None:
        return None
    return urllib.parse.unquote_plus(pair[0]), urllib.parse.unquote_plus(pair[1])


async def _client_credentials(request: web.Request, data: dict[str, str]) -> web.Response:
    """RFC 6749 4.4: a client's own token, for one of the three ways it authenticates."""
    requested = request.app[SCOPES].parse(data.get("scope"))  # bad input: before any attempt
    basic = _basic_client(request)
    assertion = "client_assertion" in data or "client_assertion_type" in data
    if (basic is not None) + ("client_secret" in data) + assertion > 1:  # RFC 6749 2.3
        raise OAuthError("invalid_request", "Authenticate the client one way only.")
    clients = request.app[CLIENTS]
    address = client_address(request)
    if basic is not None:
        if data.get("client_id", basic[0]) != basic[0]:
            raise OAuthError("invalid_request", "client_id differs from the Basic credential's.")
        client = await clients.authenticate_secret(basic[0], basic[1], address)
    elif "client_secret" in data:
        if "client_id" not in data:
            raise OAuthError("invalid_request", "client_id is required with client_secret.")
        client = await clients.authenticate_secret(data["client_id"], data["client_secret"], address)
    elif assertion:
        if "client_assertion" not in data or "client_assertion_type" not in data:
            raise OAuthError("invalid_request", "client_assertion and client_assertion_type go together.")
        client = await clients.authenticate_assertion(data["client_assertion"], data.get("client_id"), address)
    else:
        raise InvalidClient("Authenticate the client: HTTP Basic, client_secret or client_assertion.")
    return tokens_response(clients.issue(client, requested))


def _configured_client(request: web.Request, client_id: str, secret: str) -> bool:
    """One of AUTHSVC_INTROSPECTION_CLIENTS, compared in constant time."""
    matched = False
    for known_id, known_secret in request.app[SETTINGS].introspection_clients:
        # Every entry is compared, so timing does not tell which ids exist.
        same = hmac.compare_digest(client_id.encode(), known_id.encode())
        matched |= same & hmac.compare_digest(secret.encode(), known_secret.encode())
    return matched


async def _check_introspector(request: web.Request) -> None:
    """HTTP Basic with one of AUTHSVC_INTROSPECTION_CLIENTS, or a registered client holding
    the `introspect` scope (its attempts under the login throttle, as on /auth/token)."""
    try:
        pair = _basic_pair(request)
    except ValueError:
        raise ClientUnauthorized() from None
    if pair is None:
        raise ClientUnauthorized()
    if _configured_client(request, *pair):
        return
    client_id, secret = (urllib.parse.unquote_plus(part) for part in pair)
    try:
        client = await request.app[CLIENTS].authenticate_secret(client_id, secret, client_address(request))
    except InvalidClient:
        raise ClientUnauthorized() from None
    if "introspect" not in client.scopes:
        raise InsufficientScope(("introspect",), "This client may not introspect tokens.")


@routes.post("/auth/introspect")
@public  # authenticated by a client credential, not a bearer token
async def introspect(request: web.Request) -> web.Response:
    """RFC 7662 token introspection, for services that need revocation at once."""
    await _check_introspector(request)
    form = await _read_form(request)
    token = _load_form(token_form_schema, form)["token"]
    return json_response(await _introspection(request, token), headers=TOKEN_HEADERS)


async def _introspection(request: web.Request, token: str) -> dict[str, object]:
    """An API key is active while usable, a client's token while its client is enabled; the
    rest are sessions'."""
    if looks_like_api_key(token):
        return await request.app[API_KEYS].introspect(token)
    try:
        claims = request.app[SESSIONS].claims_of(token)
    except InvalidToken:
        claims = None
    if claims is not None and claims.kind == CLIENT:
        return await request.app[CLIENTS].introspect(claims)
    return await request.app[SESSIONS].introspect(token)


@routes.post("/auth/revoke")
@public  # holding the token is the proof (RFC 7009 for public clients)
async def revoke(request: web.Request) -> web.Response:
    """RFC 7009: 200 whether or not the token was known."""
    form = await _read_form(request)
    await request.app[SESSIONS].revoke_token(_load_form(token_form_schema, form)["token"])
    return web.Response(status=200, headers=TOKEN_HEADERS)
