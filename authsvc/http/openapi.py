"""The OpenAPI document, built by apispec from the marshmallow schemas that validate requests.

Every route is one row of OPERATIONS: (method, path) -> Operation. A row names the schemas
of its request (JSON body, form or query) and answer, how it is authenticated, and the
statuses special to it. The statuses every route of a kind can answer (a bearer check, a
JSON body, a form, a query string, the database) come from `_error_statuses`, so they stay
the same everywhere. A table rather than YAML in docstrings: one place to read the whole
contract, and the views stay plain. tests/test_openapi.py fails for a route without a row.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields

from authsvc import __version__
from authsvc.auth.ids import MAX_ID
from authsvc.http.schemas import (
    MAX_OFFSET,
    AdminUserListQuery,
    AdminUserSchema,
    ApiKeyCreatedSchema,
    ApiKeyCreateSchema,
    ApiKeySchema,
    ClientCreateSchema,
    ClientCredentialsGrantSchema,
    ClientLoginSchema,
    ClientSchema,
    ClientSecretSchema,
    Email,
    ErrorSchema,
    IntrospectionSchema,
    JwksSchema,
    LoginSchema,
    LogoutQuery,
    MetadataSchema,
    OAuthErrorSchema,
    PasswordChangeSchema,
    RefreshGrantSchema,
    RefreshSchema,
    RetiredSchema,
    RolesSchema,
    SignupSchema,
    StatusSchema,
    Text,
    TodoCreateSchema,
    TodoListQuery,
    TodoPatchSchema,
    TodoPutSchema,
    TodoSchema,
    TokenFormSchema,
    TokenGrantSchema,
    TokenSchema,
    UserPatchSchema,
    UserSchema,
)
from authsvc.settings import Settings

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

BEARER = "bearerAuth"
BASIC = "introspectionClient"
CLIENT_BASIC = "clientSecretBasic"  # optional on /auth/token: a client may authenticate otherwise

# aiohttp adds HEAD to every GET route (the same answer without a body); CORS adds OPTIONS
# preflights when AUTHSVC_CORS_ORIGINS is set. Neither is an operation of its own here.
IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    answer: type[Schema] | dict[str, Any] | None = None  # the 2xx body; None: no body
    media: tuple[str, ...] = (JSON,)  # the 2xx body's media types
    ok: int = 200
    json: type[Schema] | None = None  # request body, application/json
    json_also: tuple[type[Schema], ...] = ()  # other shapes it may take instead (oneOf)
    form: tuple[type[Schema], ...] = ()  # request body, form-encoded: one of these
    query: type[Schema] | None = None
    auth: str | None = BEARER  # None: public
    database: bool = True  # needs the database, so 503 when it is down
    errors: tuple[int, ...] = ()  # statuses beyond those its kind implies, or a more specific answer
    unauthorized: str = "InvalidCredentials"  # the named 401 answer, when 401 is in errors
    ok_headers: tuple[str, ...] = ()
    description: str = ""


TODO_PATH = "/todos/{id}"
ADMIN_USER_PATH = "/admin/users/{id}"
API_KEY_PATH = "/users/me/api-keys/{key_id}"
CLIENT_PATH = "/admin/clients/{id}"

OPERATIONS: dict[tuple[str, str], Operation] = {
    # --- service ---
    ("GET", "/healthz"): Operation(
        "The process is up", "service", StatusSchema, auth=None, database=False
    ),
    ("GET", "/readyz"): Operation("The database answers: send traffic here", "service", StatusSchema, auth=None),
    ("GET", "/openapi.json"): Operation(
        "This document", "service", {"type": "object"}, auth=None, database=False
    ),
    ("GET", "/.well-known/jwks.json"): Operation(
        "The public keys that verify access tokens", "service", JwksSchema, auth=None, database=False,
        description="Empty with HS256 tokens, whose key is never published.",
    ),
    ("GET", "/.well-known/oauth-authorization-server"): Operation(
        "Authorization server metadata (RFC 8414)", "service", MetadataSchema, auth=None, database=False
    ),
    ("GET", "/metrics"): Operation(
        "Prometheus metrics of every worker", "service", {"type": "string"},
        media=("text/plain", "application/openmetrics-text"),
        auth=None, database=False, errors=(404, 503),
        description="The Prometheus text format (OpenMetrics when asked for). Only direct peers in "
        "AUTHSVC_METRICS_NETWORKS get it; others get 404, as for a path that does not exist.",
    ),
    # --- auth ---
    ("POST", "/auth"): Operation(
        "Log in: start a session; or a client's own token", "auth", TokenSchema, json=LoginSchema,
        json_also=(ClientLoginSchema,), auth=None, errors=(401, 429), ok_headers=("Cache-Control",),
        description="One answer (401 invalid_credentials) for an unknown email and a wrong password. "
        "With client_id and client_secret, a registered client's token as client_credentials gives it "
        "(no refresh_token); one answer (401 invalid_client) for an unknown client, a wrong secret and a "
        "disabled client.",
    ),
    ("POST", "/auth/refresh"): Operation(
        "Exchange a refresh token for a new pair (rotation)", "auth", TokenSchema, json=RefreshSchema,
        auth=None, errors=(400,), ok_headers=("Cache-Control",),
        description="400 invalid_grant (with error_description) when the refresh token is not usable.",
    ),
    ("POST", "/auth/token"): Operation(
        "OAuth2 token endpoint: password grant (RFC 6749 4.3), client credentials (4.4) and refresh "
        "(section 6)", "auth",
        TokenSchema, form=(TokenGrantSchema, ClientCredentialsGrantSchema, RefreshGrantSchema), auth=CLIENT_BASIC,
        errors=(401, 429), unauthorized="InvalidClient", ok_headers=("Cache-Control",),
        description="The password grant answers unsupported_grant_type when AUTHSVC_PASSWORD_GRANT is off. "
        "client_credentials: the client authenticates with HTTP Basic (client_secret_basic, id and secret "
        "form-urlencoded first), client_id and client_secret in the form (client_secret_post), or "
        "client_assertion (private_key_jwt, RFC 7523); exactly one of them. Its token has no refresh_token.",
    ),
    ("POST", "/auth/logout"): Operation(
        "End this session, or with scope=all every session of the user", "auth", ok=204,
        query=LogoutQuery,
    ),
    ("POST", "/auth/introspect"): Operation(
        "Token introspection (RFC 7662) for services", "auth", IntrospectionSchema,
        form=(TokenFormSchema,), auth=BASIC, errors=(403, 429), ok_headers=("Cache-Control",),
        description="For a registered client holding the introspect scope (403 insufficient_scope for one "
        "without it), or one of AUTHSVC_INTROSPECTION_CLIENTS. A client's token is active while its client "
        "is enabled.",
    ),
    ("POST", "/auth/revoke"): Operation(
        "Revoke a refresh or access token (RFC 7009)", "auth", form=(TokenFormSchema,), auth=None,
        description="200 whether or not the token was known.",
    ),
    # --- admin: clients ---
    ("POST", "/admin/clients"): Operation(
        "Register an OAuth2 client (client_credentials)", "admin", ClientSchema, ok=201, json=ClientCreateSchema,
        errors=(409,), ok_headers=("Cache-Control",),
        description="A client_secret client's first secret is in this answer only (client_secret). "
        "private_key_jwt needs jwks or jwks_uri. 400 invalid_scope for a scope that does not exist; 409 "
        "client_name_taken.",
    ),
    ("GET", "/admin/clients"): Operation(
        "Every registered client", "admin", {"type": "array", "items": ClientSchema}
    ),
    ("POST", CLIENT_PATH + "/secrets"): Operation(
        "Rotate: a new secret, the old ones still valid until retired", "admin", ClientSecretSchema, ok=201,
        errors=(404, 409), ok_headers=("Cache-Control",),
        description="The secret is in this answer only. 409 client_has_no_secrets for a private_key_jwt client.",
    ),
    ("POST", CLIENT_PATH + "/secrets/retire"): Operation(
        "Retire every secret of the client but the newest", "admin", RetiredSchema, errors=(404,)
    ),
    ("POST", CLIENT_PATH + "/disable"): Operation(
        "Disable a client: no new token, its tokens refused at once", "admin", ClientSchema, errors=(404,)
    ),
    ("POST", CLIENT_PATH + "/enable"): Operation("Enable a client again", "admin", ClientSchema, errors=(404,)),
    ("DELETE", CLIENT_PATH): Operation(
        "Delete a client, its secrets with it", "admin", ok=204, errors=(404,)
    ),
    # --- users ---
    ("POST", "/users"): Operation(
        "Sign up", "users", UserSchema, ok=201, json=SignupSchema, auth=None, errors=(409, 422),
        ok_headers=("Location",),
    ),
    ("GET", "/users/me"): Operation("The current user", "users", UserSchema),
    ("PATCH", "/users/me"): Operation("Change the current user's names", "users", UserSchema, json=UserPatchSchema),
    ("DELETE", "/users/me"): Operation("Delete the current user, its sessions and todos", "users", ok=204),
    ("POST", "/users/me/password"): Operation(
        "Change the password; other sessions end", "users", ok=204, json=PasswordChangeSchema, errors=(403, 422, 429),
    ),
    # --- api keys ---
    ("POST", "/users/me/api-keys"): Operation(
        "Make an API key: shown in this answer only", "api keys", ApiKeyCreatedSchema, ok=201,
        json=ApiKeyCreateSchema, errors=(409,), ok_headers=("Location",),
        description="Needs a login session (an API key cannot make keys) with scope profile. The key "
        "goes as `Authorization: Bearer ak_...` and acts with its scopes, within those its owner's roles "
        "grant at the time. 400 invalid_scope for a scope that is unknown or beyond the login's; 409 "
        "too_many_api_keys past the limit per account.",
    ),
    ("GET", "/users/me/api-keys"): Operation(
        "The current user's API keys (never the keys themselves)", "api keys",
        {"type": "array", "items": ApiKeySchema},
    ),
    ("DELETE", API_KEY_PATH): Operation(
        "Delete an API key: it stops working at once", "api keys", ok=204, errors=(404,)
    ),
    ("GET", "/admin/users/{id}/api-keys"): Operation(
        "A user's API keys (scope admin)", "admin", {"type": "array", "items": ApiKeySchema}, errors=(404,)
    ),
    ("DELETE", "/admin/users/{id}/api-keys/{key_id}"): Operation(
        "Delete a user's API key (scope admin); recorded in auth_events", "admin", ok=204, errors=(404,)
    ),
    # --- todos ---
    ("GET", "/todos"): Operation(
        "The current user's todos, oldest first", "todos", {"type": "array", "items": TodoSchema},
        query=TodoListQuery, ok_headers=("Link",),
        description="Pages by id: a full page carries a Link header to the next one (after its last "
        "id, with the same limit and completed filter), each page as cheap as the first. offset "
        f"still works up to {MAX_OFFSET} but grows slower with depth; after and offset together are 422.",
    ),
    ("POST", "/todos"): Operation(
        "Create a todo", "todos", TodoSchema, ok=201, json=TodoCreateSchema, ok_headers=("Location",)
    ),
    ("GET", TODO_PATH): Operation("One todo", "todos", TodoSchema, errors=(404,)),
    ("PUT", TODO_PATH): Operation("Replace a todo", "todos", TodoSchema, json=TodoPutSchema, errors=(404,)),
    ("PATCH", TODO_PATH): Operation(
        "Change some fields of a todo", "todos", TodoSchema, json=TodoPatchSchema, errors=(404,)
    ),
    ("DELETE", TODO_PATH): Operation("Delete a todo", "todos", ok=204, errors=(404,)),
    # --- admin: users ---
    ("GET", "/admin/users"): Operation(
        "Users, by id (scope admin)", "admin", {"type": "array", "items": AdminUserSchema},
        query=AdminUserListQuery, ok_headers=("Link",),
        description="Pages by id: a full page carries a Link header to the next one (after its last id, "
        "with the same limit and email_prefix).",
    ),
    ("GET", ADMIN_USER_PATH): Operation(
        "One user (scope admin)", "admin", AdminUserSchema, errors=(404,)
    ),
    ("POST", ADMIN_USER_PATH + "/disable"): Operation(
        "Disable a user: no login, every session ends at once (scope admin)", "admin", AdminUserSchema,
        errors=(404, 409), description="409 own_account: an admin cannot disable their own account.",
    ),
    ("POST", ADMIN_USER_PATH + "/enable"): Operation(
        "Enable a user again; ended sessions stay ended (scope admin)", "admin", AdminUserSchema, errors=(404,)
    ),
    ("DELETE", ADMIN_USER_PATH): Operation(
        "Delete a user, its sessions, todos and API keys (scope admin)", "admin", ok=204, errors=(404, 409),
        description="409 own_account: an admin cannot delete their own account.",
    ),
    ("PUT", ADMIN_USER_PATH + "/roles"): Operation(
        "Set a user's roles (scope admin)", "admin", AdminUserSchema, json=RolesSchema, errors=(404, 409),
        description="Roles that grant fewer scopes than before end the user's sessions at once (their tokens "
        "carry the old scopes); more scopes come with the next refresh. 422 unknown_role for a role "
        "AUTHSVC_ROLES does not define; 409 own_account for an admin taking scopes from themselves.",
    ),
}

# Every error answer, by name. The body is ErrorSchema unless said otherwise.
RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": {
        "description": "invalid_json or invalid_body: the body could not be read; "
        "invalid_request: an access token in the URL (protected routes); "
        "invalid_scope: a scope asked for that is unknown or not granted (POST /auth, POST /users/me/api-keys).",
    },
    "OAuthBadRequest": {
        "description": "RFC 6749 5.2: invalid_request, invalid_grant, invalid_scope or unsupported_grant_type.",
        "schema": OAuthErrorSchema,
    },
    "Unauthorized": {
        "description": "unauthorized (no bearer token) or invalid_token.",
        "headers": {"WWW-Authenticate": 'Bearer realm="authsvc"[, error="invalid_token"]'},
    },
    "InvalidCredentials": {
        "description": "invalid_credentials: the email or password is not correct; invalid_client for a "
        "client's login (with a Basic challenge).",
        "headers": {"WWW-Authenticate": 'Bearer realm="authsvc"'},
    },
    "ClientUnauthorized": {
        "description": "invalid_client: no valid service credential.",
        "headers": {"WWW-Authenticate": 'Basic realm="authsvc"'},
    },
    "InvalidClient": {
        "description": "RFC 6749 5.2 invalid_client: the client's authentication failed (the same answer "
        "for an unknown client, a wrong secret or assertion and a disabled client).",
        "schema": OAuthErrorSchema,
        "headers": {"WWW-Authenticate": 'Basic realm="authsvc"'},
    },
    "Forbidden": {"description": "invalid_current_password, or insufficient_scope (see InsufficientScope)."},
    "InsufficientScope": {
        "description": "insufficient_scope: the token lacks the scope this route needs, or is of a kind it does"
        " not take (a client's token on a user's route, an API key where a login session is needed).",
        "headers": {"WWW-Authenticate": 'Bearer realm="authsvc", error="insufficient_scope", scope="<needed>"'},
    },
    "NotFound": {"description": "not_found."},
    "RequestTimeout": {"description": "request_timeout: the body did not arrive in time; the connection closes."},
    "Conflict": {"description": "email_taken; too_many_api_keys; client_name_taken; client_has_no_secrets; or"
                 " own_account: an admin acting on their own account."},
    "PayloadTooLarge": {"description": "payload_too_large: the body is over AUTHSVC_MAX_BODY_BYTES."},
    "UnsupportedMediaType": {"description": "unsupported_media_type: send UTF-8 application/json."},
    "ValidationFailed": {
        "description": "validation_failed: `details` maps each field (or _schema) to its messages; "
        "unknown_role: a role AUTHSVC_ROLES does not define.",
    },
    "ValidationFailedOrPasswordRefused": {
        "description": "validation_failed: `details` maps each field (or _schema) to its messages; or a "
        "well-formed new password refused: password_too_common, password_contextual (made from the "
        "account's email or names) or password_breached, `message` saying why.",
    },
    "TooManyAttempts": {
        "description": "too_many_attempts: a login budget is spent; wait Retry-After seconds.",
        "headers": {"Retry-After": "Seconds to wait."},
    },
    "Unavailable": {
        "description": "unavailable (the database) or busy (password hashing is saturated; on /metrics, a"
        " worker that is starting).",
        "headers": {"Retry-After": "Seconds to wait."},
    },
}

HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Retry-After": {"type": "integer", "minimum": 1},
    "Location": {"type": "string"},
    "Link": {"type": "string", "pattern": '^<[^>]+>; rel="next"$'},
    "Cache-Control": {"type": "string", "const": "no-store"},
    "WWW-Authenticate": {"type": "string"},
}


def _error_statuses(op: Operation) -> dict[int, str]:
    """Status -> named response, for everything this operation can refuse with."""
    out: dict[int, str] = {}
    if op.auth == BEARER:
        out |= {400: "BadRequest", 401: "Unauthorized", 403: "InsufficientScope"}
    if op.auth == BASIC:
        out[401] = "ClientUnauthorized"
    if op.auth == CLIENT_BASIC:
        out[401] = "InvalidClient"
    if op.json is not None:
        out |= {400: "BadRequest", 408: "RequestTimeout", 413: "PayloadTooLarge", 415: "UnsupportedMediaType"}
        out[422] = "ValidationFailed"
    if op.form:
        out |= {400: "OAuthBadRequest", 408: "RequestTimeout", 413: "PayloadTooLarge"}
    if op.query is not None:
        out[422] = "ValidationFailed"
    if op.database:
        out[503] = "Unavailable"
    special = {
        401: op.unauthorized,
        403: "Forbidden",
        404: "NotFound",
        409: "Conflict",
        422: "ValidationFailedOrPasswordRefused",  # a new password: the policy's refusals too
        429: "TooManyAttempts",
        503: "Unavailable",
    }
    for status in op.errors:
        if status != 400:  # a 400 of its own is written out in _operation
            out[status] = special[status]
    return dict(sorted(out.items()))


# Success headers sent only sometimes, and what they say.
OPTIONAL_HEADERS: dict[str, str] = {
    "Link": 'RFC 8288: `</todos?after=ID&limit=N[&completed=true|false]>; rel="next"` (on /admin/users: '
    "`after`, `limit` and `email_prefix`), the next page, on a full page only. A reference relative to "
    "the request URL, as Location is.",
}


def _header(name: str, description: str = "") -> dict[str, Any]:
    if name in OPTIONAL_HEADERS:
        return {"description": description or OPTIONAL_HEADERS[name], "required": False, "schema": HEADER_SCHEMAS[name]}
    return {"description": description or name, "required": True, "schema": HEADER_SCHEMAS[name]}


def _response_component(body_schema: type[Schema], spec: dict[str, Any]) -> dict[str, Any]:
    component: dict[str, Any] = {
        "description": spec["description"],
        "content": {JSON: {"schema": spec.get("schema", body_schema)}},
    }
    if "headers" in spec:
        component["headers"] = {name: _header(name, desc) for name, desc in spec["headers"].items()}
    return component


def _operation(method: str, path: str, op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "operationId": _operation_id(method, path)}
    if op.description:
        doc["description"] = op.description
    if op.auth == CLIENT_BASIC:
        doc["security"] = [{}, {CLIENT_BASIC: []}]  # optional: other ways to authenticate are in the body
    else:
        doc["security"] = [] if op.auth is None else [{op.auth: []}]
    parameters: list[dict[str, Any]] = []
    if path.startswith(CLIENT_PATH):
        parameters.append({
            "in": "path",
            "name": "id",
            "required": True,
            "description": "A client's id; any other value names no client: 404.",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"},
            "example": "cl_0123456789abcdef",
        })
    elif "{id}" in path:
        parameters.append({
            "in": "path",
            "name": "id",
            "required": True,
            "description": f"Any other value names no {'todo' if path.startswith('/todos') else 'user'}: 404.",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
            "example": 1,
        })
    if "{key_id}" in path:
        parameters.append({
            "in": "path",
            "name": "key_id",
            "required": True,
            "description": "An API key's id; any other value, or another user's key, is 404.",
            "schema": {"type": "string", "format": "uuid"},
        })
    if op.query is not None:
        parameters.append({"in": "query", "schema": op.query})
    if parameters:
        doc["parameters"] = parameters
    if op.json is not None:
        body: Any = op.json if not op.json_also else {"oneOf": [op.json, *op.json_also]}
        doc["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    elif op.form:
        schema: Any = op.form[0] if len(op.form) == 1 else {"oneOf": list(op.form)}
        doc["requestBody"] = {"required": True, "content": {FORM: {"schema": schema}}}

    ok: dict[str, Any] = {"description": op.summary}
    if op.answer is not None:
        ok["content"] = {media: {"schema": op.answer} for media in op.media}
    if op.ok_headers:
        ok["headers"] = {name: _header(name) for name in op.ok_headers}
    responses: dict[str, Any] = {str(op.ok): ok}
    for status, name in _error_statuses(op).items():
        responses[str(status)] = {"$ref": f"#/components/responses/{name}"}
    if 400 in op.errors and op.json is not None:
        # /auth/refresh: an unreadable body is an ErrorSchema, a refused refresh token RFC 6749 5.2.
        responses["400"] = {
            "description": "invalid_json or invalid_body; or invalid_grant for a refresh token not usable.",
            "content": {JSON: {"schema": {"oneOf": [ErrorSchema, OAuthErrorSchema]}}},
        }
    doc["responses"] = responses
    return doc


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}") for w in path.replace(".", "_").replace("-", "_").split("/") if w]
    return "_".join([method.lower(), *words])


# The ASCII addresses the signup schema takes, and takes as they are (authsvc/emails.py, by
# email-validator): a dot-atom local part; a domain of at least two labels of letters, digits
# and inner hyphens, none with "--" as its third and fourth characters (IDNA's mark of a
# Punycode label, which is stored decoded), the last one ending in a letter and none of the
# special-use names. Addresses with other characters are taken too (internationalised local
# parts and domains), and stored normalised; the description says so. No lookbehind: the
# fuzzer's regex translation needs none.
_ATOM = r"[-A-Za-z0-9!#$%&'*+/=?^_`{|}~]+"
_LDH = "[A-Za-z0-9-]"
_ALNUM = "[A-Za-z0-9]"


def _label(last: str) -> str:
    """A DNS label (at most 63 characters) ending in `last`, without "--" at 3 and 4."""
    return rf"{_ALNUM}(?:{_LDH}{{0,2}}{last}|{_LDH}(?:{_ALNUM}{_LDH}|-{_ALNUM}){_LDH}{{0,58}}{last})?"


_SPECIAL_USE = "|".join(
    "".join(f"[{c}{c.upper()}]" for c in name) for name in ("arpa", "invalid", "local", "localhost", "onion", "test")
)
EMAIL_PATTERN = (
    rf"^{_ATOM}(?:\.{_ATOM})*"
    rf"@(?!(?:[^@]*\.)?(?:{_SPECIAL_USE})$)(?:{_label(_ALNUM)}\.)+"
    rf"(?:[A-Za-z]|{_ALNUM}(?:{_LDH}{{0,2}}|{_LDH}(?:{_ALNUM}{_LDH}|-{_ALNUM}){_LDH}{{0,58}})[A-Za-z])$"
)
EMAIL_DESCRIPTION = (
    "An email address. The pattern is its ASCII form; internationalised addresses are taken too. "
    "Stored in Unicode NFKC with the domain in IDNA form, compared case-insensitively; "
    "invisible, format and control characters are refused (422), and an address that looks "
    "like an existing account's (Unicode TR39 skeleton: 'rn' and 'm', '1' and 'l') is 409 "
    "email_taken, as a duplicate is."
)


def _text_pattern(self: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    if isinstance(field, Email):
        kwargs["ret"].pop("format", None)
        return {"pattern": EMAIL_PATTERN, "description": EMAIL_DESCRIPTION}
    # Text refuses NUL characters (PostgreSQL cannot store them): say so to clients and fuzzers.
    return {"pattern": "^[^\\u0000]*$"} if isinstance(field, Text) else {}


def _schema_name(schema: type[Schema] | Schema) -> str:
    cls = schema if isinstance(schema, type) else type(schema)
    return cls.__name__.removesuffix("Schema")


def _request_schemas() -> list[type[Schema]]:
    found: list[type[Schema]] = []
    for op in OPERATIONS.values():
        for cls in (op.json, *op.json_also, op.query, *op.form):
            if cls is not None and cls not in found:
                found.append(cls)
    return found


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route the app registers, HEAD and OPTIONS aside."""
    found = set()
    for route in app.router.routes():
        if route.method in IMPLICIT_METHODS or route.resource is None:
            continue
        found.add((route.method, route.resource.canonical))
    return found


TOKEN_ENDPOINT = ("POST", "/auth/token")
# /auth/token with AUTHSVC_PASSWORD_GRANT off: the refresh grant alone, and no login budget.
REFRESH_ONLY = dataclasses.replace(
    OPERATIONS[TOKEN_ENDPOINT],
    summary="OAuth2 token endpoint: client credentials (RFC 6749 4.4) and refresh (section 6)",
    form=(ClientCredentialsGrantSchema, RefreshGrantSchema),
    description="The password grant is off here (AUTHSVC_PASSWORD_GRANT): it answers unsupported_grant_type. "
    + OPERATIONS[TOKEN_ENDPOINT].description.partition(". ")[2],
)


def build(routes: Iterable[tuple[str, str]], server_url: str, *, password_grant: bool = True) -> dict[str, Any]:
    """The document for these (method, path) routes, those OPERATIONS describes."""
    plugin = MarshmallowPlugin(schema_name_resolver=_schema_name)
    spec = APISpec(
        title="authsvc",
        version=__version__,
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={
            "description": (
                "Authentication and a small todo API. Every error is JSON: "
                "`{error, message}` with a stable snake_case `error` code, plus `details` on "
                "validation_failed and `error_description` on the OAuth endpoints. A method a path "
                "does not have answers 405 with `Allow`; HEAD works wherever GET does. A request "
                "that is not HTTP as aiohttp's parser accepts it (a request line or header over "
                "8190 bytes, over 64 headers, malformed syntax) is refused before any route, with "
                "400 in plain text, and its connection closed."
            ),
        },
        servers=[{"url": server_url}],
    )
    assert plugin.converter is not None
    plugin.converter.add_attribute_function(_text_pattern)
    spec.components.security_scheme(
        BEARER, {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "An access token."}
    )
    spec.components.security_scheme(
        BASIC,
        {
            "type": "http",
            "scheme": "basic",
            "description": "A registered client with the introspect scope, or one of AUTHSVC_INTROSPECTION_CLIENTS.",
        },
    )
    spec.components.security_scheme(
        CLIENT_BASIC,
        {
            "type": "http",
            "scheme": "basic",
            "description": "client_secret_basic (RFC 6749 2.3.1): a registered client's id and secret.",
        },
    )
    # What a schema states in code rather than in fields (LoginSchema's one identifier, the
    # forms' extra parameters) it gives as `json_schema_extra`; those go in first.
    for cls in _request_schemas():
        extra = getattr(cls, "json_schema_extra", None)
        if extra is not None:
            spec.components.schema(_schema_name(cls), extra, schema=cls)
    for name, response in RESPONSES.items():
        spec.components.response(name, _response_component(ErrorSchema, response))

    for method, path in sorted(routes, key=lambda mp: (mp[1], mp[0])):
        op = OPERATIONS.get((method, path))
        if (method, path) == TOKEN_ENDPOINT and not password_grant:
            op = REFRESH_ONLY
        if op is not None:
            spec.path(path=path, operations={method.lower(): _operation(method, path, op)})
    return spec.to_dict()


INTROSPECTION = ("POST", "/auth/introspect")


def document_bytes(app: web.Application, settings: Settings) -> bytes:
    """The served document; apps with the same routes and URL share one (tests make many apps)."""
    return _document_bytes(frozenset(routes_of(app)), settings.public_url, settings.password_grant)


@functools.lru_cache(maxsize=8)
def _document_bytes(routes: frozenset[tuple[str, str]], server_url: str, password_grant: bool) -> bytes:
    return json.dumps(build(routes, server_url, password_grant=password_grant), separators=(",", ":")).encode()
