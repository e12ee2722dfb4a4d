"""Request pipeline: every error becomes JSON; protected routes need a valid bearer token."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from authsvc.appkeys import CURRENT_SESSION, CURRENT_USER, LIVE_SESSION, SESSIONS
from authsvc.db.pool import CONTENTION_ERRORS, UNAVAILABLE_ERRORS, Contended
from authsvc.db.repo.sessions import SessionNotLive
from authsvc.errors import (
    ApiError,
    ClientGone,
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


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _is_public(request):
        return await handler(request)
    sessions = request.app[SESSIONS]
    token = bearer_token(request)
    if getattr(request.match_info.handler, "authsvc_checks_session", False):
        claims = sessions.claims_of(token)
        request[CURRENT_SESSION] = claims.session_id
        request[LIVE_SESSION] = sessions.live(claims)
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
    user, claims = await sessions.user_of(token)
    request[CURRENT_USER] = user
    request[CURRENT_SESSION] = claims.session_id
    return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    # Everything here is per-user or per-request: no shared cache may keep it.
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # aiohttp would name itself and the Python version: no help to clients, some to attackers.
    response.headers["Server"] = "authsvc"
