"""What other services need to verify our tokens on their own."""

from __future__ import annotations

from aiohttp import web

from authsvc.appkeys import SETTINGS, TOKENS
from authsvc.http.answers import json_response
from authsvc.http.middlewares import public

routes = web.RouteTableDef()

# Verifiers may cache the key set this long; a verifier meeting an unknown kid fetches at once.
JWKS_MAX_AGE = 300


@routes.get("/.well-known/jwks.json")
@public
async def jwks(request: web.Request) -> web.Response:
    keys = [key.jwk() for key in request.app[TOKENS].keys.published()]
    return json_response(
        {"keys": keys}, headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"}
    )


@routes.get("/.well-known/oauth-authorization-server")
@public
async def metadata(request: web.Request) -> web.Response:
    """RFC 8414 metadata: where the keys and endpoints are."""
    settings = request.app[SETTINGS]
    base = settings.public_url.rstrip("/")
    doc = {
        "issuer": settings.issuer,
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "token_endpoint": f"{base}/auth/token",
        "revocation_endpoint": f"{base}/auth/revoke",
        "grant_types_supported": ["refresh_token"] + (["password"] if settings.password_grant else []),
        "token_endpoint_auth_methods_supported": ["none"],
        "id_token_signing_alg_values_supported": [],
        "access_token_signing_alg_values_supported": [request.app[TOKENS].keys.active.alg],
        "audience": settings.audience,
    }
    if settings.introspection_clients:
        doc["introspection_endpoint"] = f"{base}/auth/introspect"
        doc["introspection_endpoint_auth_methods_supported"] = ["client_secret_basic"]
    return json_response(doc, headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"})
