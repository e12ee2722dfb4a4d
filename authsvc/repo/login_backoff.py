"""Failed-login counters per (identifier, address), shared by every replica through the database.

Each attempt first claims the key in one atomic upsert: the claim succeeds only when the
key's `next_attempt_at` has passed, and pushes it forward by `hold` while the password is
checked. Parallel attempts therefore cannot walk around the backoff: all but one are
refused before any hashing.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg


async def claim(
    conn: asyncpg.Connection, identifier: str, address: str, hold: timedelta, forget_after: timedelta
) -> int | None:
    """Claim the next attempt; return the failures so far, or None when it is not yet time."""
    return await conn.fetchval(
        """
        INSERT INTO login_backoff AS b (identifier, address, failures, next_attempt_at, updated_at)
        VALUES ($1, $2, 0, now() + $3::interval, now())
        ON CONFLICT (identifier, address) DO UPDATE
           SET next_attempt_at = now() + $3::interval,
               failures = CASE WHEN b.updated_at < now() - $4::interval THEN 0 ELSE b.failures END,
               updated_at = now()
         WHERE b.next_attempt_at <= now()
        RETURNING failures
        """,
        identifier,
        address,
        hold,
        forget_after,
    )


async def seconds_until_next(conn: asyncpg.Connection, identifier: str, address: str) -> float:
    value = await conn.fetchval(
        """
        SELECT greatest(extract(epoch FROM next_attempt_at - now()), 0)::float8
          FROM login_backoff WHERE identifier = $1 AND address = $2
        """,
        identifier,
        address,
    )
    return value or 0.0


async def record_failure(
    conn: asyncpg.Connection, identifier: str, address: str, base: timedelta, cap: timedelta
) -> timedelta:
    """Count a failure and close the key for base * 2^(failures-1), at most cap; return that delay."""
    delay = await conn.fetchval(
        """
        UPDATE login_backoff
           SET failures = failures + 1,
               next_attempt_at = now() + least($3::interval * power(2, least(failures, 30)), $4::interval),
               updated_at = now()
         WHERE identifier = $1 AND address = $2
        RETURNING next_attempt_at - now()
        """,
        identifier,
        address,
        base,
        cap,
    )
    return delay or timedelta(0)


async def release(conn: asyncpg.Connection, identifier: str, address: str) -> None:
    """Give back a claim whose check did not finish (no failure is counted)."""
    await conn.execute(
        "UPDATE login_backoff SET next_attempt_at = now() WHERE identifier = $1 AND address = $2",
        identifier,
        address,
    )


async def reset(conn: asyncpg.Connection, identifier: str, address: str) -> None:
    await conn.execute("DELETE FROM login_backoff WHERE identifier = $1 AND address = $2", identifier, address)


async def prune(conn: asyncpg.Connection, older_than: timedelta) -> int:
    result = await conn.execute(
        "DELETE FROM login_backoff WHERE updated_at < now() - $1::interval AND next_attempt_at < now()", older_than
    )
    return int(result.split()[-1])
