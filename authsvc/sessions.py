"""Sessions: what a login starts, a refresh continues and a logout ends.

A login creates a session row and a refresh token (256 random bits, stored as a SHA-256).
Each refresh uses the token up and hands out a new one. Presenting a used token again within
`refresh_reuse_grace` seconds (two tabs refreshing at once) yields another working pair;
later, it is taken as theft and the whole session is revoked (OWASP ASVS 10.4.5). Access
tokens name their session (`sid`), so revoking it stops them at authsvc at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from .db import UNAVAILABLE_ERRORS
from .errors import InvalidGrant, InvalidToken
from .keyring import RELOAD_EVERY
from .keys import POOL, SETTINGS, TOKENS
from .repo import sessions
from .repo.users import User
from .tokens import AccessClaims

log = logging.getLogger(__name__)

REFRESH_PREFIX = "rt_"
PRUNE_EVERY = 3600.0
KEEP_ENDED = timedelta(days=7)  # ended sessions stay visible this long, then go


def _new_refresh_token() -> tuple[str, bytes]:
    token = REFRESH_PREFIX + secrets.token_urlsafe(32)
    return token, _digest(token)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _looks_like_refresh_token(token: str) -> bool:
    return token.startswith(REFRESH_PREFIX) and 40 <= len(token) <= 100 and token.isascii()


def _idle(app: web.Application) -> timedelta:
    return timedelta(seconds=app[SETTINGS].session_idle_timeout)


def _pair(app: web.Application, user_id: int, session_id: uuid.UUID, refresh_token: str) -> dict[str, Any]:
    tokens = app[TOKENS]
    return {
        "access_token": tokens.issue(user_id, session_id),
        "token_type": "bearer",
        "expires_in": tokens.ttl,
        "refresh_token": refresh_token,
    }


async def start(app: web.Application, user: User) -> dict[str, Any]:
    """Open a session for a user who just proved who they are; return the token pair."""
    session_id = uuid.uuid4()
    refresh_token, digest = _new_refresh_token()
    lifetime = timedelta(seconds=app[SETTINGS].session_lifetime)
    async with app[POOL].acquire() as conn, conn.transaction():
        await sessions.insert_session(conn, session_id, user.id, lifetime)
        await sessions.insert_refresh_token(conn, digest, session_id)
    return _pair(app, user.id, session_id, refresh_token)


async def refresh(app: web.Application, refresh_token: str) -> dict[str, Any]:
    """Rotate a refresh token; InvalidGrant when it cannot be used."""
    if not _looks_like_refresh_token(refresh_token):
        raise InvalidGrant()
    digest = _digest(refresh_token)
    grace = timedelta(seconds=app[SETTINGS].refresh_reuse_grace)
    new_token, new_digest = _new_refresh_token()
    async with app[POOL].acquire() as conn:
        async with conn.transaction():  # statements only: the row lock is held for milliseconds
            state = await sessions.lock_refresh(conn, digest, _idle(app), grace)
            if state is None or not state.live:
                raise InvalidGrant()
            reused = state.used_at is not None
            if not reused or state.used_within_grace:
                if not reused:
                    await sessions.mark_used(conn, digest)
                await sessions.insert_refresh_token(conn, new_digest, state.session_id)
                await sessions.touch(conn, state.session_id)
                return _pair(app, state.user_id, state.session_id, new_token)
            await sessions.revoke(conn, state.session_id, "refresh_token_reuse")
    log.warning("refresh token reused after rotation: session %s revoked", state.session_id)
    raise InvalidGrant()


async def end(app: web.Application, session_id: uuid.UUID, reason: str) -> None:
    async with app[POOL].acquire() as conn:
        await sessions.revoke(conn, session_id, reason)


async def end_all(app: web.Application, user_id: int, reason: str, keep: uuid.UUID | None = None) -> int:
    async with app[POOL].acquire() as conn:
        return await sessions.revoke_all(conn, user_id, reason, keep)


async def user_of(app: web.Application, access_token: str) -> tuple[User, AccessClaims]:
    """The user and claims of a valid access token whose session is live; InvalidToken otherwise."""
    claims = app[TOKENS].verify(access_token)
    async with app[POOL].acquire() as conn:
        user = await sessions.select_session_user(conn, claims.session_id, claims.user_id, _idle(app))
    if user is None:  # logged out, expired, or the user is gone
        raise InvalidToken()
    return user, claims


async def introspect(app: web.Application, token: str) -> dict[str, Any]:
    """RFC 7662: whether a token is usable now, and its claims if it is."""
    if _looks_like_refresh_token(token):
        async with app[POOL].acquire() as conn:
            owner = await sessions.select_refresh_owner(conn, _digest(token), _idle(app))
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
        _, claims = await user_of(app, token)
    except InvalidToken:
        return {"active": False}
    return {"active": True, "token_type": "access_token", **claims.raw}


async def revoke_token(app: web.Application, token: str) -> None:
    """RFC 7009: end the session behind a refresh or access token; unknown tokens are fine."""
    session_id: uuid.UUID | None = None
    if _looks_like_refresh_token(token):
        async with app[POOL].acquire() as conn:
            session_id = await sessions.session_of_refresh_token(conn, _digest(token))
    else:
        with contextlib.suppress(InvalidToken):
            session_id = app[TOKENS].verify(token).session_id
    if session_id is not None:
        await end(app, session_id, "revoked")


async def _housekeeping(app: web.Application) -> None:
    last_prune = datetime.now(UTC)
    while True:
        await asyncio.sleep(RELOAD_EVERY)
        try:
            if await app[TOKENS].keys.reload_if_changed():
                log.info("signing keys reloaded; active key %s", app[TOKENS].keys.active.kid)
            if datetime.now(UTC) - last_prune > timedelta(seconds=PRUNE_EVERY):
                async with app[POOL].acquire() as conn:
                    await sessions.prune(conn, KEEP_ENDED)
                last_prune = datetime.now(UTC)
        except UNAVAILABLE_ERRORS:  # logged once by db.Database; the next round tries again
            pass
        except Exception:  # a bad key file must not end the loop
            log.warning("session housekeeping failed", exc_info=True)


async def sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_housekeeping(app))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
