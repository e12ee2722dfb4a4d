"""The checks every verifier of an authsvc access token makes: authsvc itself and authsvc.client."""

from __future__ import annotations

from typing import Any

import jwt

TOKEN_TYPE = "at+jwt"  # RFC 9068: keeps other JWTs (ID tokens, refresh tokens) out
REQUIRED_CLAIMS = ["sub", "iat", "exp", "iss", "aud", "jti"]
# Headers that would let a token name its own verification key or demand extensions.
FORBIDDEN_HEADERS = ("jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "crit")


def header(token: str) -> dict[str, Any] | None:
    """The header of an access token we may go on to verify, or None.

    Only the `kid` is taken from it to choose among our own keys; the algorithm must then
    match that key's, never the other way round.
    """
    if not token.isascii():  # a JWT is ASCII; a header's stray bytes would break PyJWT's encode
        return None
    try:
        found = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return None
    kid = found.get("kid")
    if found.get("typ") != TOKEN_TYPE or not isinstance(kid, str) or len(kid) > 100:
        return None
    if any(name in found for name in FORBIDDEN_HEADERS):
        return None
    return found


def claims(
    token: str, key: Any, algorithm: str, *, issuer: str, audience: str, leeway: float, required: list[str]
) -> dict[str, Any] | None:
    """The verified claims, with the algorithm pinned to the key's, or None."""
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": required},
        )
    except jwt.PyJWTError:
        return None
