from __future__ import annotations

import asyncpg

from authsvc.db.repo.sessions import LIVE_KEY_USER, LIVE_USER, Live, SessionNotLive

# What a client is shown of a todo, in the order of its answer (http/schemas.py TodoSchema).
SHOWN = "id, text, completed, created_at, updated_at"


# Every statement here checks the session with its work (LIVE_USER as the CTE `me`, $1-$3 the
# LiveSession's params; for an API key's request LIVE_KEY_USER and LiveKey's: `live.cte`) and raises SessionNotLive when it is not live: one round trip a request.
# Each is scoped by the session's user: another user's todo is simply not found.


def _one_of(row: asyncpg.Record | None) -> asyncpg.Record | None:
    """The todo of a statement that answers `me LEFT JOIN` it: no row at all is no live session,
    a row of NULLs a live one and no such todo."""
    if row is None:
        raise SessionNotLive()
    return None if row["id"] is None else row


async def insert(conn: asyncpg.Connection, live: Live, text: str, completed: bool) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""
        WITH me AS ({live.cte})
        INSERT INTO todos (owner_id, text, completed) SELECT me.id, $4, $5 FROM me
        RETURNING {SHOWN}
        """,
        *live.params,
        text,
        completed,
    )
    if row is None:
        raise SessionNotLive()
    return row


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
def _page(live_cte: str) -> str:
    return f"""
        WITH me AS ({live_cte})
        SELECT t.* FROM me LEFT JOIN LATERAL (
            SELECT {SHOWN} FROM todos
             WHERE (owner_id, id) > ($2, $5) AND owner_id <= $2
               AND ($4::boolean IS NULL OR completed = $4)
             ORDER BY owner_id, id
             LIMIT $6 OFFSET $7) t ON true
         ORDER BY t.id
"""


PAGE = _page(LIVE_USER)
PAGES = {LIVE_USER: PAGE, LIVE_KEY_USER: _page(LIVE_KEY_USER)}


async def select_page(
    conn: asyncpg.Connection,
    live: Live,
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
    rows = await conn.fetch(PAGES[live.cte], *live.params, completed, cursor, limit, offset)
    if not rows:
        raise SessionNotLive()
    return [] if rows[0]["id"] is None else rows  # a row of NULLs: a live session, an empty page


async def select_shown(conn: asyncpg.Connection, live: Live, todo_id: int) -> asyncpg.Record | None:
    """One of the session's user's todos (SHOWN columns), checked with the session as select_page."""
    row = await conn.fetchrow(
        f"""
        WITH me AS ({live.cte})
        SELECT t.{SHOWN.replace(", ", ", t.")} FROM me LEFT JOIN todos t ON t.owner_id = me.id AND t.id = $4
        """,
        *live.params,
        todo_id,
    )
    return _one_of(row)


async def update(
    conn: asyncpg.Connection, live: Live, todo_id: int, text: str | None, completed: bool | None
) -> asyncpg.Record | None:
    """Change the given fields (None keeps the current value); None when there is no such todo."""
    row = await conn.fetchrow(
        f"""
        WITH me AS ({live.cte}),
             changed AS (
                UPDATE todos
                   SET text = coalesce($5, text), completed = coalesce($6, completed), updated_at = now()
                 WHERE id = $4 AND owner_id = (SELECT id FROM me)
                RETURNING {SHOWN})
        SELECT changed.* FROM me LEFT JOIN changed ON true
        """,
        *live.params,
        todo_id,
        text,
        completed,
    )
    return _one_of(row)


async def delete(conn: asyncpg.Connection, live: Live, todo_id: int) -> bool:
    deleted = await conn.fetchval(
        f"""
        WITH me AS ({live.cte}),
             gone AS (DELETE FROM todos WHERE id = $4 AND owner_id = (SELECT id FROM me) RETURNING id)
        SELECT (SELECT count(*) FROM gone) FROM me
        """,
        *live.params,
        todo_id,
    )
    if deleted is None:
        raise SessionNotLive()
    return deleted == 1
