"""People's API keys: stored as a SHA-256 of the key, never the key."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from authsvc.db.repo.users import COLUMNS as USER_COLUMNS
from authsvc.db.repo.users import User

COLUMNS = "id, user_id, name, prefix, scopes, created_at, expires_at, last_used_at"


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    user_id: int
    name: str
    prefix: str  # what the owner is shown of the key, to tell keys apart
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


async def insert(
    conn: asyncpg.Connection,
    key_id: uuid.UUID,
    user_id: int,
    name: str,
    prefix: str,
    key_hash: bytes,
    scopes: list[str],
    lifetime: timedelta | None,
    most: int,
) -> ApiKey | None:
    """A new key; None when its owner already has `most` keys (or is gone)."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO api_keys (id, user_id, name, prefix, key_hash, scopes, expires_at)
        SELECT $1, $2, $3, $4, $5, $6, now() + $7::interval
         WHERE (SELECT count(*) FROM api_keys WHERE user_id = $2) < $8
        RETURNING {COLUMNS}
        """,
        key_id,
        user_id,
        name,
        prefix,
        key_hash,
        scopes,
        lifetime,
        most,
    )
    return ApiKey(**row) if row is not None else None


async def select_of_user(conn: asyncpg.Connection, user_id: int) -> list[ApiKey] | None:
    """A user's keys, oldest first; None when there is no such user."""
    rows = await conn.fetch(
        f"""
        WITH owner AS (SELECT id FROM users WHERE id = $1)
        SELECT {", ".join("k." + c.strip() for c in COLUMNS.split(","))}
          FROM owner LEFT JOIN api_keys k ON k.user_id = owner.id
         ORDER BY k.created_at, k.id
        """,
        user_id,
    )
    if not rows:
        return None
    return [] if rows[0]["id"] is None else [ApiKey(**row) for row in rows]


async def delete(conn: asyncpg.Connection, user_id: int, key_id: uuid.UUID) -> bool:
    return await conn.execute("DELETE FROM api_keys WHERE id = $1 AND user_id = $2", key_id, user_id) == "DELETE 1"


# A key is usable while it has not expired and its owner is not disabled (a deleted owner
# takes its keys along: ON DELETE CASCADE).
USABLE = "u.disabled_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())"


async def select_usable(conn: asyncpg.Connection, key_hash: bytes) -> tuple[ApiKey, User] | None:
    """A usable key and its owner, in one statement."""
    key_columns = [c.strip() for c in COLUMNS.split(",")]
    user_columns = [c.strip() for c in USER_COLUMNS.split(",")]
    row = await conn.fetchrow(
        f"""
        SELECT {", ".join(f"k.{c} AS k_{c}" for c in key_columns)},
               {", ".join(f"u.{c} AS u_{c}" for c in user_columns)}
          FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE k.key_hash = $1 AND {USABLE}
        """,
        key_hash,
    )
    if row is None:
        return None
    key = ApiKey(**{c: row[f"k_{c}"] for c in key_columns})
    return key, User(**{c: row[f"u_{c}"] for c in user_columns})


async def record_use(conn: asyncpg.Connection, key_ids: list[uuid.UUID], used_at: list[datetime]) -> None:
    """last_used_at of many keys in one statement; an earlier time never replaces a later one
    (two processes flush the same key)."""
    await conn.execute(
        """
        UPDATE api_keys k SET last_used_at = greatest(k.last_used_at, used.at)
          FROM unnest($1::uuid[], $2::timestamptz[]) AS used(id, at)
         WHERE k.id = used.id
        """,
        key_ids,
        used_at,
    )
