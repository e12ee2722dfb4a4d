"""Access tokens: signed JWTs with pinned algorithm, audience, issuer and type."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

from .errors import InvalidToken
from .ids import parse_id

ALGORITHM = "HS256"
TOKEN_TYPE = "at+jwt"  # RFC 9068: keeps other JWTs (ID tokens, refresh tokens) out
REQUIRED_CLAIMS = ["sub", "iat", "exp", "iss", "aud", "jti"]


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int

    def body(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "token_type": "bearer", "expires_in": self.expires_in}


class TokenService:
    def __init__(self, secret: str, issuer: str, audience: str, ttl: int, leeway: int) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl
        self._leeway = leeway

    def issue(self, user_id: int) -> IssuedToken:
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "sub": str(user_id),
            "aud": self._audience,
            "iat": now,
            "exp": now + self._ttl,
            "jti": secrets.token_urlsafe(16),
        }
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM, headers={"typ": TOKEN_TYPE})
        return IssuedToken(token, self._ttl)

    def verify(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid access token; raise InvalidToken otherwise."""
        try:
            decoded = jwt.decode_complete(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError:
            raise InvalidToken() from None
        # PyJWT does not check `typ`; without this any JWT signed with our key would pass.
        if decoded["header"].get("typ") != TOKEN_TYPE:
            raise InvalidToken()
        claims = decoded["payload"]
        sub = claims["sub"]
        if not isinstance(sub, str) or parse_id(sub) is None:
            raise InvalidToken()
        return claims
