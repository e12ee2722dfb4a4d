from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

COLUMNS = "id, email, password_hash, first_name, last_name, created_at, updated_at, disabled_at"


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


def _user(row: asyncpg.Record | None) -> User | None:
    return User(**row) if row is not None else None


async def insert(
    conn: asyncpg.Connection, email: str, password_hash: str, first_name: str | None, last_name: str | None
) -> User | None:
    """Insert a user; None when the email is taken (case-insensitively)."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO users (email, password_hash, first_name, last_name)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT ((lower(email))) DO NOTHING
        RETURNING {COLUMNS}
        """,
        email,
        password_hash,
        first_name,
        last_name,
    )
    return _user(row)


async def select_by_email(conn: asyncpg.Connection, email: str) -> User | None:
    return _user(await conn.fetchrow(f"SELECT {COLUMNS} FROM users WHERE lower(email) = lower($1)", email))


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


async def set_disabled(conn: asyncpg.Connection, user_id: int, disabled: bool) -> None:
    await conn.execute(
        "UPDATE users SET disabled_at = CASE WHEN $2 THEN now() END, updated_at = now() WHERE id = $1",
        user_id,
        disabled,
    )


async def delete(conn: asyncpg.Connection, user_id: int) -> bool:
    return await conn.execute("DELETE FROM users WHERE id = $1", user_id) == "DELETE 1"
