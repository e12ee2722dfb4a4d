"""Sessions: what a login starts, a refresh continues and a logout ends.

A login creates a session row and a refresh token (256 random bits, stored as a SHA-256).
Each refresh uses the token up and hands out a new one. Presenting a used token again within
`refresh_reuse_grace` seconds (two tabs refreshing at once) yields another working pair;
later, it is taken as theft and the whole session is revoked (OWASP ASVS 10.4.5). Access
tokens name their session (`sid`), so revoking it stops them at authsvc at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import uuid
from datetime import timedelta
from typing import Any

from authsvc.auth.scopes import ScopeModel, format_scopes
from authsvc.auth.tokens import AccessClaims, TokenService
from authsvc.db.pool import Database
from authsvc.db.repo import sessions as session_repo
from authsvc.db.repo.sessions import LiveSession
from authsvc.db.repo.users import User
from authsvc.errors import InvalidGrant, InvalidToken

log = logging.getLogger(__name__)

REFRESH_PREFIX = "rt_"
KEEP_ENDED = timedelta(days=7)  # ended sessions stay visible this long, then go


def _new_refresh_token() -> tuple[str, bytes]:
    token = REFRESH_PREFIX + secrets.token_urlsafe(32)
    return token, _digest(token)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _looks_like_refresh_token(token: str) -> bool:
    return token.startswith(REFRESH_PREFIX) and 40 <= len(token) <= 100 and token.isascii()


class Sessions:
    """Opens, rotates, checks and ends sessions."""

    def __init__(
        self,
        pool: Database,
        tokens: TokenService,
        scopes: ScopeModel,
        idle: timedelta,
        lifetime: timedelta,
        reuse_grace: timedelta,
    ) -> None:
        self._pool = pool
        self._tokens = tokens
        self._scopes = scopes
        self._idle = idle
        self._lifetime = lifetime
        self._grace = reuse_grace

    def _pair(self, user_id: int, session_id: uuid.UUID, scopes: frozenset[str], refresh_token: str) -> dict[str, Any]:
        return {
            "access_token": self._tokens.issue(user_id, session_id, scopes),
            "token_type": "bearer",
            "expires_in": self._tokens.ttl,
            "refresh_token": refresh_token,
            "scope": format_scopes(scopes),
        }

    def granted(self, roles: list[str] | tuple[str, ...], asked: list[str] | frozenset[str] | None) -> frozenset[str]:
        """What a session's tokens carry: its user's roles' scopes, within what its login asked for."""
        allowed = self._scopes.of_roles(roles)
        return allowed if asked is None else allowed & frozenset(asked)

    async def start(self, user: User, requested: frozenset[str] | None = None) -> dict[str, Any]:
        """Open a session for a user who just proved who they are; return the token pair.
        `requested`: the scopes the login asked for (InvalidScope past its roles'), None: all."""
        scopes = self._scopes.narrow(requested, self._scopes.of_roles(user.roles))
        session_id = uuid.uuid4()
        refresh_token, digest = _new_refresh_token()
        asked = sorted(requested) if requested is not None else None
        async with self._pool.acquire() as conn, conn.transaction():
            await session_repo.insert_session(conn, session_id, user.id, self._lifetime, asked)
            await session_repo.insert_refresh_token(conn, digest, session_id)
        return self._pair(user.id, session_id, scopes, refresh_token)

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        """Rotate a refresh token; InvalidGrant when it cannot be used."""
        if not _looks_like_refresh_token(refresh_token):
            raise InvalidGrant()
        digest = _digest(refresh_token)
        new_token, new_digest = _new_refresh_token()
        async with self._pool.acquire() as conn:
            async with conn.transaction():  # statements only: the row lock is held for milliseconds
                state = await session_repo.lock_refresh(conn, digest, self._idle, self._grace)
                if state is None or not state.live:
                    raise InvalidGrant()
                reused = state.used_at is not None
                if not reused or state.used_within_grace:
                    if not reused:
                        await session_repo.mark_used(conn, digest)
                    await session_repo.insert_refresh_token(conn, new_digest, state.session_id)
                    await session_repo.touch(conn, state.session_id)
                    # Today's roles: a role lost since the login is not in the new token.
                    scopes = self.granted(state.roles, state.scopes)
                    return self._pair(state.user_id, state.session_id, scopes, new_token)
                await session_repo.revoke(conn, state.session_id, "refresh_token_reuse")
        log.warning("refresh token reused after rotation: session %s revoked", state.session_id)
        raise InvalidGrant()

    async def end(self, session_id: uuid.UUID, reason: str) -> None:
        async with self._pool.acquire() as conn:
            await session_repo.revoke(conn, session_id, reason)

    async def end_all(self, user_id: int, reason: str, keep: uuid.UUID | None = None) -> int:
        async with self._pool.acquire() as conn:
            return await session_repo.revoke_all(conn, user_id, reason, keep)

    def claims_of(self, access_token: str) -> AccessClaims:
        """A valid access token's claims, its session not yet checked; InvalidToken otherwise."""
        return self._tokens.verify(access_token)

    def scopes_of(self, claims: AccessClaims) -> frozenset[str]:
        """What a token may do; one issued before tokens carried a scope, what signups get."""
        if claims.scopes is not None:
            return claims.scopes
        return self._scopes.of_roles([self._scopes.default_role])

    def live(self, claims: AccessClaims) -> LiveSession:
        """The session check of these claims, for a statement that makes it with its own work."""
        assert claims.session_id is not None and claims.user_id is not None, "a user's token"
        return LiveSession(claims.session_id, claims.user_id, self._idle)

    async def user_of(self, access_token: str) -> tuple[User, AccessClaims]:
        """The user and claims of a valid access token whose session is live; InvalidToken otherwise."""
        claims = self._tokens.verify(access_token)
        if claims.kind != "user":
            raise InvalidToken()
        async with self._pool.acquire() as conn:
            user = await session_repo.select_session_user(conn, self.live(claims))
        if user is None:  # logged out, expired, or the user is gone
            raise InvalidToken()
        return user, claims

    async def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662: whether a token is usable now, and its claims if it is."""
        if _looks_like_refresh_token(token):
            async with self._pool.acquire() as conn:
                owner = await session_repo.select_refresh_owner(conn, _digest(token), self._idle)
            if owner is None:
                return {"active": False}
            session_id, user_id, expires_at = owner
            return {
                "active": True,
                "token_type": "refresh_token",
                "sub": str(user_id),
                "sid": str(session_id),
                "exp": int(expires_at.timestamp()),
            }
        try:
            _, claims = await self.user_of(token)
        except InvalidToken:
            return {"active": False}
        return {"active": True, "token_type": "access_token", **claims.raw}

    async def revoke_token(self, token: str) -> None:
        """RFC 7009: end the session behind a refresh or access token; unknown tokens are fine."""
        session_id: uuid.UUID | None = None
        if _looks_like_refresh_token(token):
            async with self._pool.acquire() as conn:
                session_id = await session_repo.session_of_refresh_token(conn, _digest(token))
        else:
            with contextlib.suppress(InvalidToken):
                session_id = self._tokens.verify(token).session_id
        if session_id is not None:
            await self.end(session_id, "revoked")

    async def prune(self) -> None:
        """Drop sessions that ended more than KEEP_ENDED ago."""
        async with self._pool.acquire() as conn:
            await session_repo.prune(conn, KEEP_ENDED)
