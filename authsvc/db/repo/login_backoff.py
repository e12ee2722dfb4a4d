"""Failed-login counters per (identifier, address), shared by every replica through the database.

Each attempt first claims the key in one atomic upsert: the claim succeeds only when the
key is not in backoff (`next_attempt_at`) and fewer attempts than allowed are in flight
(`in_flight`, until `held_until`), and holds it while the password is checked. A pair with
failures allows one attempt at a time, so parallel guesses cannot walk around the backoff;
a clean pair the caller trusts (see auth/throttle/claims.py) allows as many as it passes.

Where this table's rows come in the login path's lock order: auth/throttle/claims.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from authsvc.db.repo import delete_in_batches


@dataclass(frozen=True)
class Closed:
    seconds: float  # until the key may open
    backoff: bool  # True: a backoff, which nothing ends early; False: held by an attempt in flight


# Failures older than the window are forgotten: the pair counts as clean again.
def _failures(forget_after: str) -> str:
    return f"CASE WHEN b.updated_at < now() - {forget_after}::interval THEN 0 ELSE b.failures END"


def _room(forget_after: str, parallel: str) -> str:
    """Whether the pair admits one more attempt now (backoff aside): the claim's rule, which
    the waiters' look repeats."""
    return (
        f"(b.held_until <= now() OR b.in_flight < CASE WHEN {_failures(forget_after)} = 0 THEN {parallel} ELSE 1 END)"
    )


# After a success or failure: one claim fewer in flight; the hold ends with the last one.
DONE = """in_flight = greatest(in_flight - 1, 0),
          held_until = CASE WHEN in_flight <= 1 THEN least(held_until, now()) ELSE held_until END"""


async def claim(
    conn: asyncpg.Connection, identifier: str, address: str, hold: timedelta, forget_after: timedelta, parallel: int
) -> int | None:
    """Claim the next attempt; return the failures so far, or None when the key is closed.

    `parallel`: how many attempts may be in flight at once while the pair has no failures;
    with failures, one.
    """
    return await conn.fetchval(
        f"""
        INSERT INTO login_backoff AS b (identifier, address, held_until, in_flight)
        VALUES ($1, $2, now() + $3::interval, 1)
        ON CONFLICT (identifier, address) DO UPDATE
           SET failures = {_failures("$4")},
               in_flight = CASE WHEN b.held_until <= now() THEN 1 ELSE b.in_flight + 1 END,
               held_until = now() + $3::interval,
               updated_at = now()
         WHERE b.next_attempt_at <= now()
           AND {_room("$4", "$5")}
        RETURNING failures
        """,
        identifier,
        address,
        hold,
        forget_after,
        parallel,
    )


async def held_full(
    conn: asyncpg.Connection, identifier: str, address: str, forget_after: timedelta, parallel: int
) -> bool:
    """Whether a claim with this `parallel` would find the pair full of attempts in flight (and
    not in backoff): a plain read, which locks nothing, for a waiter to look before it claims."""
    return bool(
        await conn.fetchval(
            f"""
            SELECT b.next_attempt_at <= now() AND NOT {_room("$3", "$4")}
              FROM login_backoff b WHERE b.identifier = $1 AND b.address = $2
            """,
            identifier,
            address,
            forget_after,
            parallel,
        )
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
        f"""
        UPDATE login_backoff
           SET failures = failures + 1,
               next_attempt_at = now() + least($3::interval * power(2, least(failures, 30)), $4::interval),
               {DONE},
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
        f"UPDATE login_backoff SET {DONE} WHERE identifier = $1 AND address = $2",
        identifier,
        address,
    )


async def reset(conn: asyncpg.Connection, identifier: str, address: str) -> None:
    """A success: the failures and any backoff are forgotten. The row goes, unless other
    claims of the pair are still in flight (their hold stays)."""
    deleted = await conn.execute(
        """
        DELETE FROM login_backoff
         WHERE identifier = $1 AND address = $2 AND (in_flight <= 1 OR held_until <= now())
        """,
        identifier,
        address,
    )
    if deleted == "DELETE 0":
        await conn.execute(
            f"""
            UPDATE login_backoff SET failures = 0, next_attempt_at = least(next_attempt_at, now()), {DONE},
                                     updated_at = now()
             WHERE identifier = $1 AND address = $2
            """,
            identifier,
            address,
        )


async def prune(conn: asyncpg.Connection, older_than: timedelta) -> int:
    return await delete_in_batches(
        conn,
        """
        DELETE FROM login_backoff WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM login_backoff
             WHERE updated_at < now() - $1::interval AND next_attempt_at < now() AND held_until < now()
             ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED))
        """,
        older_than,
    )


async def forget(conn: asyncpg.Connection, identifier: str | None = None, address: str | None = None) -> int:
    """Drop every pair of an identifier or of an address (an operator's reset); return how many.

    One statement each: an identifier's pairs are found by the primary key. An address's are
    found by reading the table (no index serves them, and one would cost every login's claim a
    write for the sake of a rare command).
    """
    deleted = 0
    if identifier is not None:
        deleted += int((await conn.execute("DELETE FROM login_backoff WHERE identifier = $1", identifier)).split()[-1])
    if address is not None:
        deleted += int((await conn.execute("DELETE FROM login_backoff WHERE address = $1", address)).split()[-1])
    return deleted
