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
from authsvc.errors import InvalidToken

REQUIRED_CLAIMS = [*jwtcheck.REQUIRED_CLAIMS, "sid"]
# Verified tokens kept so a client's next request skips the signature check (about 60% of
# the work of GET /users/me measured); bounded, and each hit re-checks expiry and its key.
VERIFIED_MAX = 10_000


@dataclass(frozen=True)
class AccessClaims:
    user_id: int
    session_id: uuid.UUID
    raw: dict[str, Any]


class TokenService:
    def __init__(self, keys: KeyRing, issuer: str, audience: str, ttl: int, leeway: int) -> None:
        self.keys = keys
        self._issuer = issuer
        self._audience = audience
        self.ttl = ttl
        self._leeway = leeway
        self._verified: dict[str, tuple[AccessClaims, str]] = {}  # token -> (claims, kid)

    def issue(self, user_id: int, session_id: uuid.UUID) -> str:
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "sub": str(user_id),
            "aud": self._audience,
            "iat": now,
            "exp": now + self.ttl,
            "jti": secrets.token_urlsafe(16),
            "sid": str(session_id),
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
        user_id = parse_id(claims["sub"]) if isinstance(claims["sub"], str) else None
        try:
            session_id = uuid.UUID(claims["sid"]) if isinstance(claims["sid"], str) else None
        except ValueError:
            session_id = None
        if user_id is None or session_id is None:
            raise InvalidToken()
        return AccessClaims(user_id, session_id, claims), key.kid
