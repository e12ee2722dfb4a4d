from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from authsvc.auth.emails import Address, lookup_key

COLUMNS = (
    "id, email, password_hash, first_name, last_name, created_at, updated_at, disabled_at,"
    " email_key, email_skeleton, email_collides_with, roles"
)


@dataclass(frozen=True)
class User:
    id: int
    email: str
    password_hash: str
    first_name: str | None
    last_name: str | None
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None = None  # set by `authsvc users disable`: no login, no session
    # authsvc/emails.py; NULL until the backfill of migration 0006 reached a row written before it
    email_key: str | None = None
    email_skeleton: str | None = None
    email_collides_with: int | None = None  # the account whose key or skeleton the backfill found it shares
    roles: list[str] | tuple[str, ...] = ()  # each grants scopes (auth/scopes.py)


def _user(row: asyncpg.Record | None) -> User | None:
    return User(**row) if row is not None else None


async def insert(
    conn: asyncpg.Connection,
    address: Address,
    password_hash: str,
    first_name: str | None,
    last_name: str | None,
    roles: list[str],
) -> User | None:
    """Insert a user; None when the address is taken: the same key, or the same skeleton (a
    look-alike), or (rows not keyed yet) the same lower(email)."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO users (email, email_key, email_skeleton, password_hash, first_name, last_name, roles)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT DO NOTHING
        RETURNING {COLUMNS}
        """,
        address.email,
        address.key,
        address.skeleton,
        password_hash,
        first_name,
        last_name,
        roles,
    )
    return _user(row)


async def select_by_id(conn: asyncpg.Connection, user_id: int, *, lock: bool = False) -> User | None:
    """The user with this id; `lock`: FOR UPDATE, for a change that depends on what it reads."""
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM users WHERE id = $1" + (" FOR UPDATE" if lock else ""), user_id
    )
    return _user(row)


async def select_page(conn: asyncpg.Connection, email_prefix: str | None, after_id: int, limit: int) -> list[User]:
    """Users by id after `after_id` (keyset: as cheap at any depth), those whose email starts
    with `email_prefix` (any case) when it is given."""
    rows = await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM users
         WHERE id > $1 AND ($2::text IS NULL OR starts_with(lower(email), lower($2)))
         ORDER BY id
         LIMIT $3
        """,
        after_id,
        email_prefix,
        limit,
    )
    return [User(**row) for row in rows]


async def select_by_email(conn: asyncpg.Connection, email: str) -> User | None:
    """The account an address typed at login (or given to a command) names, if any."""
    row = await conn.fetchrow(
        f"""
        SELECT {COLUMNS} FROM users
         WHERE email_key = $1
            OR (email_key IS NULL AND email_collides_with IS NULL AND lower(email) = lower($2))
         ORDER BY email_key IS NULL, id
         LIMIT 1
        """,
        lookup_key(email),
        email,
    )
    return _user(row)


# --- the backfill of migration 0006 (authsvc/email_backfill.py) ---


async def select_unkeyed(conn: asyncpg.Connection, after_id: int, limit: int) -> list[tuple[int, str]]:
    """(id, email) of rows without keys yet, oldest first, from after_id on."""
    rows = await conn.fetch(
        """
        SELECT id, email FROM users
         WHERE email_key IS NULL AND email_collides_with IS NULL AND id > $1
         ORDER BY id
         LIMIT $2
        """,
        after_id,
        limit,
    )
    return [(r["id"], r["email"]) for r in rows]


async def select_holder(conn: asyncpg.Connection, user_id: int, key: str, skeleton: str) -> tuple[int, bool] | None:
    """(id, same key?) of another account holding this key or, failing that, this skeleton."""
    row = await conn.fetchrow(
        """
        SELECT id, email_key = $2 AS same_key FROM users
         WHERE id <> $1 AND (email_key = $2 OR email_skeleton = $3)
         ORDER BY email_key = $2 DESC, id
         LIMIT 1
        """,
        user_id,
        key,
        skeleton,
    )
    return (row["id"], row["same_key"]) if row is not None else None


async def set_email_keys(
    conn: asyncpg.Connection, user_id: int, key: str | None, skeleton: str | None, collides_with: int | None
) -> None:
    """Store a row's keys. A row that collides with another keeps what it does not share;
    one without a key is disabled (no login, no session) until an operator decides."""
    await conn.execute(
        """
        UPDATE users
           SET email_key = $2, email_skeleton = $3, email_collides_with = $4,
               disabled_at = CASE WHEN $2::text IS NULL THEN coalesce(disabled_at, now()) ELSE disabled_at END,
               updated_at = CASE WHEN $4::bigint IS NULL THEN updated_at ELSE now() END
         WHERE id = $1
        """,
        user_id,
        key,
        skeleton,
        collides_with,
    )


async def update_names(conn: asyncpg.Connection, user_id: int, changes: dict[str, str | None]) -> User | None:
    """Set first_name and/or last_name; keys come from the schema, never from the client."""
    first_set = "first_name" in changes
    last_set = "last_name" in changes
    row = await conn.fetchrow(
        f"""
        UPDATE users
           SET first_name = CASE WHEN $2 THEN $3 ELSE first_name END,
               last_name  = CASE WHEN $4 THEN $5 ELSE last_name END,
               updated_at = now()
         WHERE id = $1
        RETURNING {COLUMNS}
        """,
        user_id,
        first_set,
        changes.get("first_name"),
        last_set,
        changes.get("last_name"),
    )
    return _user(row)


async def update_password_hash(
    conn: asyncpg.Connection, user_id: int, password_hash: str, expected_old: str | None = None
) -> bool:
    """Store a new hash. With expected_old, only if the hash is still that one (no lost update)."""
    result = await conn.execute(
        """
        UPDATE users SET password_hash = $2, updated_at = now()
         WHERE id = $1 AND ($3::text IS NULL OR password_hash = $3)
        """,
        user_id,
        password_hash,
        expected_old,
    )
    return result == "UPDATE 1"


async def set_disabled(conn: asyncpg.Connection, user_id: int, disabled: bool) -> User | None:
    row = await conn.fetchrow(
        f"""
        UPDATE users SET disabled_at = CASE WHEN $2 THEN now() END, updated_at = now() WHERE id = $1
        RETURNING {COLUMNS}
        """,
        user_id,
        disabled,
    )
    return _user(row)


async def delete(conn: asyncpg.Connection, user_id: int) -> bool:
    return await conn.execute("DELETE FROM users WHERE id = $1", user_id) == "DELETE 1"


async def set_roles(conn: asyncpg.Connection, user_id: int, roles: list[str]) -> User | None:
    row = await conn.fetchrow(
        f"UPDATE users SET roles = $2, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}", user_id, roles
    )
    return _user(row)
