"""What other services need to verify our tokens on their own."""

from __future__ import annotations

from aiohttp import web

from authsvc.appkeys import SCOPES, SETTINGS, TOKENS
from authsvc.auth.assertions import ASYMMETRIC_ALGORITHMS
from authsvc.auth.scopes import format_scopes
from authsvc.http.answers import json_response
from authsvc.http.middlewares import public

routes = web.RouteTableDef()

# Verifiers may cache the key set this long; a verifier meeting an unknown kid fetches at once.
JWKS_MAX_AGE = 300
TOKEN_AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post", "private_key_jwt")


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
        "scopes_supported": format_scopes(request.app[SCOPES].known).split(),
        "grant_types_supported": ["refresh_token", "client_credentials"]
        + (["password"] if settings.password_grant else []),
        # none: the password and refresh grants take no client authentication.
        "token_endpoint_auth_methods_supported": list(TOKEN_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": sorted(ASYMMETRIC_ALGORITHMS),  # private_key_jwt
        "id_token_signing_alg_values_supported": [],
        "access_token_signing_alg_values_supported": [request.app[TOKENS].keys.active.alg],
        "audience": settings.audience,
    }
    doc["introspection_endpoint"] = f"{base}/auth/introspect"
    doc["introspection_endpoint_auth_methods_supported"] = ["client_secret_basic"]
    return json_response(doc, headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"})
