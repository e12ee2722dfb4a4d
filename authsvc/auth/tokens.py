"""Access tokens: JWTs signed by the key ring's active key, verified against our own keys only."""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from authsvc.auth import jwtcheck
from authsvc.auth.ids import parse_id
from authsvc.auth.keyring import KeyRing
from authsvc.auth.scopes import format_scopes
from authsvc.errors import InvalidToken

REQUIRED_CLAIMS = jwtcheck.REQUIRED_CLAIMS
CLIENT_ID_MAX = 64
# Verified tokens kept so a client's next request skips the signature check (about 60% of
# the work of GET /users/me measured); bounded, and each hit re-checks expiry and its key.
VERIFIED_MAX = 10_000


@dataclass(frozen=True)
class AccessClaims:
    """A user's token names its session (`sid`); a client's (client_credentials) its client_id.
    `scopes` is None for a user token issued before tokens carried a scope."""

    kind: str  # "user" or "client"
    user_id: int | None
    session_id: uuid.UUID | None
    client_id: str | None
    scopes: frozenset[str] | None
    raw: dict[str, Any]


class TokenService:
    def __init__(self, keys: KeyRing, issuer: str, audience: str, ttl: int, leeway: int) -> None:
        self.keys = keys
        self._issuer = issuer
        self._audience = audience
        self.ttl = ttl
        self._leeway = leeway
        self._verified: dict[str, tuple[AccessClaims, str]] = {}  # token -> (claims, kid)

    def issue(self, user_id: int, session_id: uuid.UUID, scopes: frozenset[str]) -> str:
        """A user's access token, for the session it belongs to."""
        return self._sign(str(user_id), self.ttl, {"sid": str(session_id), "scope": format_scopes(scopes)})

    def issue_client(self, client_id: str, scopes: frozenset[str], ttl: int) -> str:
        """A client's own access token (client_credentials): RFC 9068 with `client_id`, no session."""
        return self._sign(client_id, ttl, {"client_id": client_id, "scope": format_scopes(scopes)})

    def _sign(self, subject: str, ttl: int, extra: dict[str, str]) -> str:
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "sub": subject,
            "aud": self._audience,
            "iat": now,
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(16),
            **extra,
        }
        key = self.keys.active
        headers = {"typ": jwtcheck.TOKEN_TYPE, "kid": key.kid}
        return jwt.encode(claims, key.private, algorithm=key.alg, headers=headers)

    def verify(self, token: str) -> AccessClaims:
        """The claims of a well-signed, current access token; InvalidToken otherwise."""
        hit = self._verified.get(token)
        if hit is not None:
            claims, kid = hit
            if time.time() < claims.raw["exp"] + self._leeway and self.keys.key_for(kid) is not None:
                return claims
            del self._verified[token]
        claims, kid = self._verify(token)
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified[token] = (claims, kid)
        return claims

    def _verify(self, token: str) -> tuple[AccessClaims, str]:
        """The key is chosen by `kid` among our own keys and the algorithm is that key's, so
        `alg: none`, HS256 signed with a public key and keys named in the token all fail."""
        header = jwtcheck.header(token)
        key = self.keys.key_for(header["kid"]) if header else None
        if header is None or key is None or header.get("alg") != key.alg:
            raise InvalidToken()
        claims = jwtcheck.claims(
            token,
            key.public,
            key.alg,
            issuer=self._issuer,
            audience=self._audience,
            leeway=self._leeway,
            required=REQUIRED_CLAIMS,
        )
        if claims is None:
            raise InvalidToken()
        scope = claims.get("scope")
        if scope is not None and not isinstance(scope, str):
            raise InvalidToken()
        scopes = frozenset(scope.split()) if scope is not None else None
        if "sid" not in claims:
            return _client_claims(claims, scopes), key.kid
        user_id = parse_id(claims["sub"]) if isinstance(claims["sub"], str) else None
        try:
            session_id = uuid.UUID(claims["sid"]) if isinstance(claims["sid"], str) else None
        except ValueError:
            session_id = None
        if user_id is None or session_id is None or "client_id" in claims:
            raise InvalidToken()
        return AccessClaims("user", user_id, session_id, None, scopes, claims), key.kid


def _client_claims(claims: dict[str, Any], scopes: frozenset[str] | None) -> AccessClaims:
    """A client's token: its client_id is its subject, and it must say what it may do."""
    client_id = claims.get("client_id")
    if (
        not isinstance(client_id, str)
        or not 0 < len(client_id) <= CLIENT_ID_MAX
        or claims["sub"] != client_id
        or scopes is None
    ):
        raise InvalidToken()
    return AccessClaims("client", None, None, client_id, scopes, claims)
