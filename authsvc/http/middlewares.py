"""Request pipeline: every error becomes JSON; protected routes need a valid bearer token."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from authsvc.appkeys import (
    API_KEYS,
    CLIENTS,
    CURRENT_SESSION,
    CURRENT_USER,
    LIVE_SESSION,
    PRINCIPAL,
    SESSIONS,
)
from authsvc.auth.api_keys import looks_like_api_key
from authsvc.auth.principal import API_KEY, CLIENT, USER, Principal
from authsvc.auth.tokens import AccessClaims
from authsvc.db.pool import CONTENTION_ERRORS, UNAVAILABLE_ERRORS, Contended
from authsvc.db.repo.sessions import LiveKey, SessionNotLive
from authsvc.errors import (
    ApiError,
    ClientGone,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    Unauthorized,
    Unavailable,
)
from authsvc.http.answers import json_response
from authsvc.observability.logs import client_text, note_user

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
F = TypeVar("F", bound=Handler)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


CLIENT_GONE = 499


def public(handler: F) -> F:
    """Mark a handler as reachable without a bearer token."""
    handler.authsvc_public = True  # type: ignore[attr-defined]
    return handler


def checks_session(handler: F) -> F:
    """Mark a protected handler whose own statement checks the session (sessions.LIVE_USER
    joined to its work: one round trip): the middleware verifies the token, hands the handler
    request[LIVE_SESSION] and answers 401 when that statement raises SessionNotLive."""
    handler.authsvc_checks_session = True  # type: ignore[attr-defined]
    return handler


# Who may call a route (Principal kinds): a user's login session or API key, the default; a
# login session only (what a leaked key must not do: logout, password, new keys); anyone.
USERS = (USER, API_KEY)
SESSION = (USER,)
ANY = (USER, CLIENT, API_KEY)


def requires(*scopes: str, subjects: tuple[str, ...] = USERS) -> Callable[[F], F]:
    """Declare what a protected handler needs: every scope named, and a caller of one of these
    kinds; else 403 insufficient_scope. A handler without it takes a login session, no scope."""

    def mark(handler: F) -> F:
        handler.authsvc_needs = (scopes, subjects)  # type: ignore[attr-defined]
        return handler

    return mark


def needs_of(handler: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return getattr(handler, "authsvc_needs", ((), SESSION))


def error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return json_response(body, status=status, headers=headers)


@web.middleware
async def errors_to_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.body(), exc.headers)
        if exc.close_connection:
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return error_response(exc.status, {"error": code, "message": exc.reason}, headers)
    except ClientGone:
        # Nobody reads this answer; 499 (nginx's code) keeps it out of the 5xx counts.
        return web.Response(status=CLIENT_GONE)
    except UNAVAILABLE_ERRORS as exc:
        # db.Database logs the outage once; a line per request would flood the log.
        log.debug("database unavailable for %s %s: %s", request.method, client_text(request.path), type(exc).__name__)
        unavailable = Unavailable()
        return error_response(unavailable.status, unavailable.body(), unavailable.headers)
    except (Contended, *CONTENTION_ERRORS):
        # Rolled back for contention (retried already where it is expected): worth a retry
        # by the client, never a 500.
        unavailable = Unavailable(retry_after=1)
        return error_response(unavailable.status, unavailable.body(), unavailable.headers)
    except Exception:
        # The traceback goes to the log; the client learns only that it was our fault.
        log.exception("unhandled error for %s %s", request.method, client_text(request.path))
        return error_response(500, {"error": "internal_error", "message": "Something went wrong on our side."})


def _is_public(request: web.Request) -> bool:
    match_info = request.match_info
    if match_info.http_exception is not None:  # no such route or method: 404/405, not 401
        return True
    if request.method == "OPTIONS":  # CORS preflight carries no credentials
        return True
    return getattr(match_info.handler, "authsvc_public", False)


def bearer_token(request: web.Request) -> str:
    """The token from `Authorization: Bearer ...` (RFC 6750 2.1), the only place we accept it."""
    if "access_token" in request.query:
        raise InvalidRequest("Send the token in the Authorization header, never in the URL.")
    header = request.headers.get("Authorization")
    if header is None:
        raise Unauthorized()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        # Another scheme is no credentials at all for us (RFC 6750 3.1): a bare challenge.
        raise Unauthorized("Use `Authorization: Bearer <token>`.")
    token = token.strip()
    if not token:
        raise InvalidToken("Use `Authorization: Bearer <token>`.")
    return token


def _allowed(principal_kind: str, scopes: frozenset[str], needs: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
    needed, subjects = needs
    if principal_kind not in subjects:
        raise InsufficientScope(needed, f"This route does not take a {principal_kind.replace('_', ' ')}'s token.")
    if not scopes.issuperset(needed):
        raise InsufficientScope(needed)


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _is_public(request):
        return await handler(request)
    sessions = request.app[SESSIONS]
    token = bearer_token(request)
    needs = needs_of(request.match_info.handler)
    if looks_like_api_key(token):
        return await _as_api_key(request, handler, token, needs)
    claims = sessions.claims_of(token)
    if claims.kind == CLIENT:
        return await _as_client(request, handler, claims, needs)
    scopes = sessions.scopes_of(claims)
    try:
        _allowed(USER, scopes, needs)
    except InsufficientScope:
        await sessions.user_of(token)  # an ended session's token: 401 first, as everywhere
        raise
    principal = Principal(USER, scopes, user_id=claims.user_id, session_id=claims.session_id)
    if getattr(request.match_info.handler, "authsvc_checks_session", False):
        request[CURRENT_SESSION] = principal.session_id  # type: ignore[assignment]
        request[LIVE_SESSION] = sessions.live(claims)
        request[PRINCIPAL] = principal
        try:
            response = await handler(request)
        except SessionNotLive:
            raise InvalidToken() from None
        except ApiError:
            # Refused before its statement ran, perhaps (a bad query): an ended session's
            # token is still answered 401 first, as on every other route.
            await sessions.user_of(token)
            note_user(claims.user_id)
            raise
        note_user(claims.user_id)
        return response
    user, _ = await sessions.user_of(token)  # the same claims, its session now checked
    request[CURRENT_USER] = user
    request[CURRENT_SESSION] = principal.session_id  # type: ignore[assignment]
    request[PRINCIPAL] = dataclasses.replace(principal, user=user)
    return await handler(request)


async def _as_client(
    request: web.Request, handler: Handler, claims: AccessClaims, needs: tuple[tuple[str, ...], tuple[str, ...]]
) -> web.StreamResponse:
    """A client's own token: it acts within what the client may do now (disabled: not at all)."""
    assert claims.client_id is not None and claims.scopes is not None
    allowed = await request.app[CLIENTS].live_scopes(claims.client_id)
    if allowed is None:
        raise InvalidToken()
    scopes = claims.scopes & allowed
    _allowed(CLIENT, scopes, needs)
    request[PRINCIPAL] = Principal(CLIENT, scopes, client_id=claims.client_id)
    return await handler(request)


async def _as_api_key(
    request: web.Request, handler: Handler, key: str, needs: tuple[tuple[str, ...], tuple[str, ...]]
) -> web.StreamResponse:
    """A person's API key: it acts for its owner with its scopes (within the owner's roles')."""
    principal = await request.app[API_KEYS].resolve(key)
    if principal is None:  # unknown, expired, deleted, or its owner disabled or gone
        raise InvalidToken("The API key is invalid or has expired.")
    _allowed(API_KEY, principal.scopes, needs)
    assert principal.user is not None and principal.user_id is not None and principal.api_key_id is not None
    request[PRINCIPAL] = principal
    request[CURRENT_USER] = principal.user
    note_user(principal.user_id)
    if not getattr(request.match_info.handler, "authsvc_checks_session", False):
        return await handler(request)
    # The route's statement checks the key again with its work (deleted since the resolve: 401).
    request[LIVE_SESSION] = LiveKey(principal.api_key_id, principal.user_id)
    try:
        return await handler(request)
    except SessionNotLive:
        raise InvalidToken("The API key is invalid or has expired.") from None


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    # Everything here is per-user or per-request: no shared cache may keep it.
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # aiohttp would name itself and the Python version: no help to clients, some to attackers.
    response.headers["Server"] = "authsvc"
