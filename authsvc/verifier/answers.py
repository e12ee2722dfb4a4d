"""The verifier's refusals: JSON bodies with the challenge RFC 6750 section 3 asks for."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

REALM = 'Bearer realm="api"'


def unauthorized(code: str) -> web.Response:
    """401: no bearer token ("unauthorized"), or one that fails a check ("invalid_token")."""
    challenge = REALM if code == "unauthorized" else f'{REALM}, error="{code}"'
    return web.json_response(
        {"error": code, "message": "A valid bearer token is required."},
        status=401,
        headers={"WWW-Authenticate": challenge},
    )


def insufficient_scope(needed: Iterable[str]) -> web.Response:
    """403 naming every scope the resource needs (scope names carry no quote or backslash)."""
    scope = " ".join(sorted(set(needed)))
    return web.json_response(
        {"error": "insufficient_scope", "message": f"This needs a token with the scopes: {scope}."},
        status=403,
        headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{scope}"'},
    )


def unavailable() -> web.Response:
    """503 when authsvc cannot be asked about an API key: the key may well be valid, so not a 401."""
    return web.json_response(
        {"error": "temporarily_unavailable", "message": "The credential cannot be checked now; try again."},
        status=503,
        headers={"Retry-After": "1"},
    )
