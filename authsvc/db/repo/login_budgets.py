"""Token buckets for the account-wide and address-wide login budgets.

A bucket holds at most `capacity` tokens and refills at `rate` tokens a second; a login
attempt takes one before any password is checked, and a success gives it back. So at most
capacity + rate * T failures fit in any period T, whatever the parallelism.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from authsvc.db.repo import delete_in_batches

# The bucket's level now, from its stored level and the time since.
LEVEL = "least($3, b.tokens + extract(epoch FROM now() - b.updated_at) * $4)"


async def take(conn: asyncpg.Connection, scope: str, key: str, capacity: float, rate: float) -> bool:
    """Take one token; False when the bucket is empty or blocked."""
    taken = await conn.fetchval(
        f"""
        INSERT INTO login_budgets AS b (scope, key, tokens, updated_at)
        VALUES ($1, $2, $3::float8 - 1, now())
        ON CONFLICT (scope, key) DO UPDATE
           SET tokens = {LEVEL} - 1, updated_at = now()
         WHERE b.blocked_until <= now() AND {LEVEL} >= 1
        RETURNING true
        """,
        scope,
        key,
        float(capacity),
        float(rate),
    )
    return bool(taken)


async def seconds_until_token(conn: asyncpg.Connection, scope: str, key: str, capacity: float, rate: float) -> float:
    value = await conn.fetchval(
        f"""
        SELECT greatest(extract(epoch FROM greatest(b.blocked_until, now()) - now())::float8, (1 - {LEVEL}) / $4, 0)
          FROM login_budgets b WHERE b.scope = $1 AND b.key = $2
        """,
        scope,
        key,
        float(capacity),
        float(rate),
    )
    return value or 0.0


async def give_back(conn: asyncpg.Connection, scope: str, key: str, capacity: float) -> None:
    await conn.execute(
        "UPDATE login_budgets SET tokens = least($3, tokens + 1) WHERE scope = $1 AND key = $2",
        scope,
        key,
        float(capacity),
    )


async def block(conn: asyncpg.Connection, scope: str, key: str, duration: timedelta) -> None:
    """Refuse the key for `duration`, unless it is blocked already (no extension by retrying)."""
    await conn.execute(
        """
        UPDATE login_budgets SET blocked_until = now() + $3::interval
         WHERE scope = $1 AND key = $2 AND blocked_until <= now()
        """,
        scope,
        key,
        duration,
    )


async def prune(conn: asyncpg.Connection, idle_for: timedelta) -> int:
    """Drop buckets untouched for `idle_for` (long enough to be full again) and not blocked."""
    return await delete_in_batches(
        conn,
        """
        DELETE FROM login_budgets WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM login_budgets WHERE updated_at < now() - $1::interval AND blocked_until < now()
             ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED))
        """,
        idle_for,
    )


async def forget(conn: asyncpg.Connection, scope: str, key: str) -> bool:
    """Drop a bucket and its block (an operator's reset): the next attempt finds it full."""
    return await conn.execute("DELETE FROM login_budgets WHERE scope = $1 AND key = $2", scope, key) == "DELETE 1"
