"""Failed-login counters per (identifier, address), shared by every replica through the database.

Each attempt first claims the key in one atomic upsert: the claim succeeds only when the
key is neither in backoff (`next_attempt_at`) nor held by another attempt in flight
(`held_until`), and holds it while the password is checked. Parallel attempts therefore
cannot walk around the backoff: all but one are refused before any hashing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from . import delete_in_batches


@dataclass(frozen=True)
class Closed:
    seconds: float  # until the key may open
    backoff: bool  # True: a backoff, which nothing ends early; False: held by an attempt in flight


async def claim(
    conn: asyncpg.Connection, identifier: str, address: str, hold: timedelta, forget_after: timedelta
) -> int | None:
    """Claim the next attempt; return the failures so far, or None when the key is closed."""
    return await conn.fetchval(
        """
        INSERT INTO login_backoff AS b (identifier, address, held_until)
        VALUES ($1, $2, now() + $3::interval)
        ON CONFLICT (identifier, address) DO UPDATE
           SET held_until = now() + $3::interval,
               failures = CASE WHEN b.updated_at < now() - $4::interval THEN 0 ELSE b.failures END,
               updated_at = now()
         WHERE b.next_attempt_at <= now() AND b.held_until <= now()
        RETURNING failures
        """,
        identifier,
        address,
        hold,
        forget_after,
    )


async def closed_for(conn: asyncpg.Connection, identifier: str, address: str) -> Closed:
    row = await conn.fetchrow(
        """
        SELECT greatest(extract(epoch FROM next_attempt_at - now()), 0)::float8 AS backoff,
               greatest(extract(epoch FROM held_until - now()), 0)::float8 AS held
          FROM login_backoff WHERE identifier = $1 AND address = $2
        """,
        identifier,
        address,
    )
    if row is None:
        return Closed(0.0, False)
    if row["backoff"] > 0:
        return Closed(row["backoff"], True)
    return Closed(row["held"], False)


async def record_failure(
    conn: asyncpg.Connection, identifier: str, address: str, base: timedelta, cap: timedelta
) -> timedelta:
    """Count a failure and close the key for base * 2^(failures-1), at most cap; return that delay."""
    delay = await conn.fetchval(
        """
        UPDATE login_backoff
           SET failures = failures + 1,
               next_attempt_at = now() + least($3::interval * power(2, least(failures, 30)), $4::interval),
               held_until = now(),
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
        "UPDATE login_backoff SET held_until = now() WHERE identifier = $1 AND address = $2",
        identifier,
        address,
    )


async def reset(conn: asyncpg.Connection, identifier: str, address: str) -> None:
    await conn.execute("DELETE FROM login_backoff WHERE identifier = $1 AND address = $2", identifier, address)


async def prune(conn: asyncpg.Connection, older_than: timedelta) -> int:
    return await delete_in_batches(
        conn,
        """
        DELETE FROM login_backoff WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM login_backoff
             WHERE updated_at < now() - $1::interval AND next_attempt_at < now() AND held_until < now()
             LIMIT $2))
        """,
        older_than,
    )


async def forget(conn: asyncpg.Connection, identifier: str | None = None, address: str | None = None) -> int:
    """Drop every pair of an identifier or of an address (an operator's reset); return how many."""
    result = await conn.execute(
        "DELETE FROM login_backoff WHERE identifier = $1 OR address = $2", identifier, address
    )
    return int(result.split()[-1])
