"""Each prune removes exactly the rows past its age, in batches that each commit on their own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from authsvc.auth.sessions import KEEP_ENDED
from authsvc.auth.throttle.logins import prunes
from authsvc.auth.throttle.policy import Limits
from authsvc.db import repo
from authsvc.db.repo import sessions as session_repo
from authsvc.settings import Settings

BATCH = 3
OLD = 7  # rows past the age: more than two batches


class Batches:
    """The connection, noting what each of the prune's statements deleted, and whether it ran
    inside a transaction (it must not: each batch commits on its own)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.deleted: list[int] = []
        self.in_transaction: list[bool] = []

    def is_in_transaction(self) -> bool:
        return self.conn.is_in_transaction()

    async def execute(self, sql: str, *args: Any) -> str:
        self.in_transaction.append(self.conn.is_in_transaction())
        status = await self.conn.execute(sql, *args)
        self.deleted.append(int(status.split()[-1]))
        return status


# Per table: the rows past the age (OLD of them, tagged 'old'), the rows that stay (tagged
# 'kept': inside the age, or past it but still in use), and how to read the tags back.
Fill = Callable[[asyncpg.Connection, timedelta], Awaitable[None]]


async def _user(db: asyncpg.Connection) -> int:
    return await db.fetchval("INSERT INTO users (email, password_hash) VALUES ('p@example.com', 'x') RETURNING id")


async def fill_sessions(db: asyncpg.Connection, age: timedelta) -> None:
    """Each session's tag goes in revoked_reason, which nothing here reads."""
    user = await _user(db)
    rows = (
        # (tag, created, expires, revoked) as offsets from now, in days
        [("old", -38, -age.days - 1, None)] * 4  # expired before the age
        + [("old", -20, 10, -age.days - 1)] * 3  # revoked before it, though not expired
        + [("kept", -36, -age.days + 1, None), ("kept", -20, 10, -age.days + 1), ("kept", -1, 29, None)]
    )
    for i, (tag, created, expires, revoked) in enumerate(rows):
        session = await db.fetchval(
            """
            INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, revoked_at, revoked_reason)
            VALUES (gen_random_uuid(), $1, now() + make_interval(days => $2), now() + make_interval(days => $2),
                    now() + make_interval(days => $3), now() + make_interval(days => $4), $5)
            RETURNING id
            """,
            user, created, expires, revoked, tag,
        )
        await db.execute(
            "INSERT INTO refresh_tokens (token_hash, session_id) VALUES (sha256(convert_to($1, 'UTF8')), $2)",
            f"{tag} {i}", session,
        )


async def tags_sessions(db: asyncpg.Connection) -> list[str]:
    tokens = await db.fetchval("SELECT count(*) FROM refresh_tokens")
    assert tokens == await db.fetchval("SELECT count(*) FROM sessions")  # the tokens went with their sessions
    return [r[0] for r in await db.fetch("SELECT coalesce(revoked_reason, 'kept') FROM sessions")]


async def fill_auth_events(db: asyncpg.Connection, age: timedelta) -> None:
    await db.execute(
        """
        INSERT INTO auth_events (at, identifier, address, outcome)
        SELECT now() - $1::interval * CASE WHEN i <= $2 THEN 1.01 ELSE 0.99 END,
               CASE WHEN i <= $2 THEN 'old' ELSE 'kept' END, '192.0.2.1', 'failure'
          FROM generate_series(1, $2 + 2) AS i
        """,
        age, OLD,
    )


async def tags_auth_events(db: asyncpg.Connection) -> list[str]:
    return [r[0] for r in await db.fetch("SELECT identifier FROM auth_events")]


async def fill_login_backoff(db: asyncpg.Connection, age: timedelta) -> None:
    await db.execute(
        """
        INSERT INTO login_backoff (identifier, address, failures, next_attempt_at, held_until, updated_at)
        SELECT CASE WHEN i <= $2 THEN 'old' ELSE 'kept' END, '192.0.2.' || i, 1, t, t, t
          FROM generate_series(1, $2 + 2) AS i,
               LATERAL (SELECT now() - $1::interval * CASE WHEN i <= $2 THEN 1.01 ELSE 0.99 END AS t) x
        """,
        age, OLD,
    )
    # Past the age, but an attempt holds it now: it stays.
    await db.execute(
        "INSERT INTO login_backoff (identifier, address, failures, next_attempt_at, held_until, updated_at, in_flight)"
        " VALUES ('kept', '198.51.100.1', 1, now() - $1::interval, now() + interval '15 seconds',"
        " now() - $1::interval * 1.01, 1)",
        age,
    )


async def tags_login_backoff(db: asyncpg.Connection) -> list[str]:
    return [r[0] for r in await db.fetch("SELECT identifier FROM login_backoff")]


async def fill_login_budgets(db: asyncpg.Connection, age: timedelta) -> None:
    await db.execute(
        """
        INSERT INTO login_budgets (scope, key, tokens, updated_at)
        SELECT 'address', CASE WHEN i <= $2 THEN 'old ' ELSE 'kept ' END || i, 1,
               now() - $1::interval * CASE WHEN i <= $2 THEN 1.01 ELSE 0.99 END
          FROM generate_series(1, $2 + 2) AS i
        """,
        age, OLD,
    )
    # Idle past the age, but blocked still: it stays.
    await db.execute(
        "INSERT INTO login_budgets (scope, key, tokens, updated_at, blocked_until)"
        " VALUES ('address', 'kept blocked', 0, now() - $1::interval * 1.01, now() + interval '1 minute')",
        age,
    )


async def tags_login_budgets(db: asyncpg.Connection) -> list[str]:
    return [r[0].split()[0] for r in await db.fetch("SELECT key FROM login_budgets")]


async def fill_known_addresses(db: asyncpg.Connection, age: timedelta) -> None:
    await db.execute(
        """
        INSERT INTO login_known_addresses (identifier, address, last_success_at)
        SELECT CASE WHEN i <= $2 THEN 'old' ELSE 'kept' END, '192.0.2.' || i,
               now() - $1::interval * CASE WHEN i <= $2 THEN 1.01 ELSE 0.99 END
          FROM generate_series(1, $2 + 2) AS i
        """,
        age, OLD,
    )


async def tags_known_addresses(db: asyncpg.Connection) -> list[str]:
    return [r[0] for r in await db.fetch("SELECT identifier FROM login_known_addresses")]


def _ages(settings: Settings) -> dict[str, timedelta]:
    lim = Limits.from_settings(settings)
    return {
        "sessions": KEEP_ENDED,
        "login_backoff": lim.failure_window,
        "login_budgets": max(timedelta(hours=1), lim.address_block),
        "known_addresses": lim.known_address_age,
        "auth_events": lim.events_kept,
    }


TABLES = {
    "sessions": (fill_sessions, tags_sessions),
    "login_backoff": (fill_login_backoff, tags_login_backoff),
    "login_budgets": (fill_login_budgets, tags_login_budgets),
    "known_addresses": (fill_known_addresses, tags_known_addresses),
    "auth_events": (fill_auth_events, tags_auth_events),
}


def test_every_prune_of_the_loops_is_tested(settings):
    assert set(prunes(Limits.from_settings(settings))) | {"sessions"} == set(TABLES)


@pytest.mark.parametrize("table", TABLES)
async def test_a_prune_over_several_batches_removes_exactly_the_old_rows(table, settings, db, monkeypatch):
    monkeypatch.setattr(repo, "PRUNE_BATCH", BATCH)
    fill, tags = TABLES[table]
    await fill(db, _ages(settings)[table])
    kept = [t for t in await tags(db) if t != "old"]
    assert kept and len(await tags(db)) - len(kept) == OLD

    prune = prunes(Limits.from_settings(settings)).get(table) or (lambda c: session_repo.prune(c, KEEP_ENDED))
    conn = Batches(db)
    assert await prune(conn) == OLD
    assert conn.deleted == [BATCH, BATCH, OLD - 2 * BATCH]  # each batch a statement of its own
    assert conn.in_transaction == [False] * 3  # each committed on its own
    assert sorted(await tags(db)) == sorted(kept)


async def test_a_prune_inside_a_transaction_is_refused(db):
    """Its batches would hold their locks until the transaction's end."""
    async with db.transaction():
        with pytest.raises(RuntimeError, match="outside a transaction"):
            await session_repo.prune(db, KEEP_ENDED)
