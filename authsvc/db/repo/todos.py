from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from authsvc.db.repo.sessions import LIVE_USER, LiveSession, SessionNotLive

COLUMNS = "id, owner_id, text, completed, created_at, updated_at"
# What a client is shown of a todo, in the order of its answer (schemas.todo_json).
SHOWN = "id, text, completed, created_at, updated_at"


@dataclass(frozen=True)
class Todo:
    id: int
    owner_id: int
    text: str
    completed: bool
    created_at: datetime
    updated_at: datetime


def _todo(row: asyncpg.Record | None) -> Todo | None:
    return Todo(**row) if row is not None else None


async def insert(conn: asyncpg.Connection, owner_id: int, text: str, completed: bool) -> Todo:
    row = await conn.fetchrow(
        f"INSERT INTO todos (owner_id, text, completed) VALUES ($1, $2, $3) RETURNING {COLUMNS}",
        owner_id,
        text,
        completed,
    )
    return Todo(**row)


# A page of the session's user's todos (SHOWN columns) with the session check, one statement:
# $1-$3 are LiveSession.params ($2 the user, whose todos these are once the session is live),
# then completed (NULL: all), the cursor, limit and offset. The page is `owner_id = $2 AND
# id > $5`, written as a range of todos_owner_id_idx (owner_id, id): then that index is the
# only one that gives these rows in this order, and the scan starts at the cursor and stops at
# the owner's last todo, whatever the data. Written plainly, PostgreSQL may instead walk the
# primary key from the cursor and filter by owner, through every later todo of every other
# user: on a table where the owner's todos come before others' (or after them), a page read
# about 100 times the blocks, in the plan for the values and in the generic plan that a
# prepared statement settles on. tests/api/test_todos.py checks the plans.
PAGE = f"""
        WITH me AS ({LIVE_USER})
        SELECT t.* FROM me LEFT JOIN LATERAL (
            SELECT {SHOWN} FROM todos
             WHERE (owner_id, id) > ($2, $5) AND owner_id <= $2
               AND ($4::boolean IS NULL OR completed = $4)
             ORDER BY owner_id, id
             LIMIT $6 OFFSET $7) t ON true
         ORDER BY t.id
"""


async def select_page(
    conn: asyncpg.Connection,
    live: LiveSession,
    *,
    limit: int,
    after: int | None = None,
    offset: int = 0,
    completed: bool | None = None,
) -> list[asyncpg.Record]:
    """Up to `limit` of the session's user's todos in id order: those with an id above `after`
    (a keyset cursor, as cheap at any depth), less the first `offset` of them (each one skipped
    is read). No row at all means the session is not live (SessionNotLive)."""
    cursor = 0 if after is None else after  # ids start at 1: no cursor is "after 0"
    rows = await conn.fetch(PAGE, *live.params, completed, cursor, limit, offset)
    if not rows:
        raise SessionNotLive()
    return [] if rows[0]["id"] is None else rows  # a row of NULLs: a live session, an empty page


async def select_shown(conn: asyncpg.Connection, live: LiveSession, todo_id: int) -> asyncpg.Record | None:
    """One of the session's user's todos (SHOWN columns), checked with the session as select_page."""
    row = await conn.fetchrow(
        f"""
        WITH me AS ({LIVE_USER})
        SELECT t.{SHOWN.replace(", ", ", t.")} FROM me LEFT JOIN todos t ON t.owner_id = me.id AND t.id = $4
        """,
        *live.params,
        todo_id,
    )
    if row is None:
        raise SessionNotLive()
    return None if row["id"] is None else row


# Every statement below is scoped by owner: another user's todo is simply not found.


async def select_one(conn: asyncpg.Connection, owner_id: int, todo_id: int) -> Todo | None:
    return _todo(await conn.fetchrow(f"SELECT {COLUMNS} FROM todos WHERE id = $1 AND owner_id = $2", todo_id, owner_id))


async def update(
    conn: asyncpg.Connection, owner_id: int, todo_id: int, text: str | None, completed: bool | None
) -> Todo | None:
    """Change the given fields (None keeps the current value)."""
    row = await conn.fetchrow(
        f"""
        UPDATE todos
           SET text = coalesce($3, text), completed = coalesce($4, completed), updated_at = now()
         WHERE id = $1 AND owner_id = $2
        RETURNING {COLUMNS}
        """,
        todo_id,
        owner_id,
        text,
        completed,
    )
    return _todo(row)


async def delete(conn: asyncpg.Connection, owner_id: int, todo_id: int) -> bool:
    return await conn.execute("DELETE FROM todos WHERE id = $1 AND owner_id = $2", todo_id, owner_id) == "DELETE 1"
