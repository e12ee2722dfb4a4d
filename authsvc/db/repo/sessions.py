"""Sessions and refresh tokens."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from authsvc.db.repo import delete_in_batches
from authsvc.db.repo.users import COLUMNS as USER_COLUMNS
from authsvc.db.repo.users import User


@dataclass(frozen=True)
class RefreshState:
    """A presented refresh token with its session, locked for this transaction."""

    session_id: uuid.UUID
    user_id: int
    roles: list[str]
    scopes: list[str] | None  # what the login asked for; None: all its roles grant
    used_at: datetime | None
    live: bool  # the session is neither revoked nor expired (absolute or idle)
    used_within_grace: bool


async def insert_session(
    conn: asyncpg.Connection, session_id: uuid.UUID, user_id: int, lifetime: timedelta, scopes: list[str] | None
) -> None:
    await conn.execute(
        "INSERT INTO sessions (id, user_id, expires_at, scopes) VALUES ($1, $2, now() + $3::interval, $4)",
        session_id,
        user_id,
        lifetime,
        scopes,
    )


async def insert_refresh_token(conn: asyncpg.Connection, token_hash: bytes, session_id: uuid.UUID) -> None:
    await conn.execute("INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)", token_hash, session_id)


async def lock_refresh(
    conn: asyncpg.Connection, token_hash: bytes, idle: timedelta, grace: timedelta
) -> RefreshState | None:
    """Find a refresh token and lock it and its session: refreshes of one session take turns.

    Both rows are locked, so a refresh that waited re-reads the token's used_at as the one
    before it left it; and the grace is measured on the clock, not from the start of this
    transaction, which may have begun before the other one used the token.
    """
    row = await conn.fetchrow(
        """
        SELECT s.id AS session_id, s.user_id, u.roles, s.scopes, t.used_at,
               (s.revoked_at IS NULL AND s.expires_at > now() AND s.last_used_at > now() - $2::interval
                AND u.disabled_at IS NULL) AS live,
               (t.used_at IS NOT NULL AND t.used_at > clock_timestamp() - $3::interval) AS used_within_grace
          FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id
         WHERE t.token_hash = $1
           FOR UPDATE OF s, t
        """,
        token_hash,
        idle,
        grace,
    )
    return RefreshState(**row) if row is not None else None


async def mark_used(conn: asyncpg.Connection, token_hash: bytes) -> None:
    await conn.execute("UPDATE refresh_tokens SET used_at = clock_timestamp() WHERE token_hash = $1", token_hash)


async def touch(conn: asyncpg.Connection, session_id: uuid.UUID) -> None:
    await conn.execute("UPDATE sessions SET last_used_at = now() WHERE id = $1", session_id)


async def revoke(conn: asyncpg.Connection, session_id: uuid.UUID, reason: str) -> bool:
    result = await conn.execute(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $2 WHERE id = $1 AND revoked_at IS NULL",
        session_id,
        reason,
    )
    return result == "UPDATE 1"


async def revoke_all(
    conn: asyncpg.Connection, user_id: int, reason: str, keep: uuid.UUID | None = None
) -> int:
    result = await conn.execute(
        """
        UPDATE sessions SET revoked_at = now(), revoked_reason = $2
         WHERE user_id = $1 AND revoked_at IS NULL AND ($3::uuid IS NULL OR id <> $3)
        """,
        user_id,
        reason,
        keep,
    )
    return int(result.split()[-1])


class SessionNotLive(Exception):
    """A statement that checks the session with its work found it ended, expired or idle."""


@dataclass(frozen=True)
class LiveSession:
    """What an access token claims (its session and user) and how long a session may idle:
    the parameters $1 to $3 of LIVE_USER, in that order."""

    session_id: uuid.UUID
    user_id: int
    idle: timedelta

    @property
    def params(self) -> tuple[uuid.UUID, int, timedelta]:
        return self.session_id, self.user_id, self.idle

    @property
    def cte(self) -> str:
        return LIVE_USER


@dataclass(frozen=True)
class LiveKey:
    """What an API key's request is to check in a route's statement (LiveSession's place):
    the key still usable, $2 its owner as in LIVE_USER, so the statements after `me` are the same."""

    key_id: uuid.UUID
    user_id: int

    @property
    def params(self) -> tuple[uuid.UUID, int, None]:
        return self.key_id, self.user_id, None

    @property
    def cte(self) -> str:
        return LIVE_KEY_USER


# The user of a live session: the check behind every authenticated request, on its own or as
# the first part of a route's statement (one round trip). A disabled user has no live session,
# even one that began while disabling was under way.
LIVE_USER = f"""
        SELECT {", ".join("u." + c.strip() for c in USER_COLUMNS.split(","))}
          FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL AND u.disabled_at IS NULL
           AND s.expires_at > now() AND s.last_used_at > now() - $3::interval
"""


# The owner of a usable API key (api_keys.USABLE), with LIVE_USER's columns and parameters; $3
# is unused (NULL), there only so that the statements' own parameters start at $4 either way.
LIVE_KEY_USER = f"""
        SELECT {", ".join("u." + c.strip() for c in USER_COLUMNS.split(","))}
          FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE k.id = $1 AND k.user_id = $2 AND u.disabled_at IS NULL
           AND (k.expires_at IS NULL OR k.expires_at > now()) AND $3::interval IS NULL
"""

Live = LiveSession | LiveKey


async def select_session_user(conn: asyncpg.Connection, live: LiveSession) -> User | None:
    row = await conn.fetchrow(LIVE_USER, *live.params)
    return User(**row) if row is not None else None


async def select_refresh_owner(
    conn: asyncpg.Connection, token_hash: bytes, idle: timedelta
) -> tuple[uuid.UUID, int, datetime] | None:
    """(session, user, session expiry) of a refresh token that could still be used."""
    row = await conn.fetchrow(
        """
        SELECT s.id, s.user_id, s.expires_at
          FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id
         WHERE t.token_hash = $1 AND t.used_at IS NULL AND s.revoked_at IS NULL AND u.disabled_at IS NULL
           AND s.expires_at > now() AND s.last_used_at > now() - $2::interval
        """,
        token_hash,
        idle,
    )
    return (row["id"], row["user_id"], row["expires_at"]) if row is not None else None


async def session_of_refresh_token(conn: asyncpg.Connection, token_hash: bytes) -> uuid.UUID | None:
    return await conn.fetchval("SELECT session_id FROM refresh_tokens WHERE token_hash = $1", token_hash)


async def prune(conn: asyncpg.Connection, older_than: timedelta) -> int:
    """Drop sessions that ended (expired or revoked) longer ago than `older_than`, with their
    refresh tokens. least() passes over a NULL revoked_at: the expression of sessions_ended_at_idx."""
    return await delete_in_batches(
        conn,
        """
        DELETE FROM sessions WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM sessions
             WHERE least(expires_at, revoked_at) < now() - $1::interval
             ORDER BY least(expires_at, revoked_at)
             LIMIT $2))
        """,
        older_than,
    )
