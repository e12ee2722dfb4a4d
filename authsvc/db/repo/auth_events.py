"""The record of login attempts: time, identifier, address, outcome. Never a password."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from authsvc.db.repo import delete_in_batches


async def insert(
    conn: asyncpg.Connection, identifier: str, address: str, outcome: str, reason: str | None = None
) -> None:
    await conn.execute(
        "INSERT INTO auth_events (identifier, address, outcome, reason) VALUES ($1, $2, $3, $4)",
        identifier,
        address,
        outcome,
        reason,
    )


async def insert_admin(conn: asyncpg.Connection, actor: str, action: str, target: str, address: str) -> None:
    """An admin action: who (`user:12`, `client:cl_...`, `operator`), what (`user.disable`), to what."""
    await conn.execute(
        "INSERT INTO auth_events (identifier, address, outcome, reason, actor) VALUES ($1, $2, 'admin', $3, $4)",
        target,
        address,
        action,
        actor,
    )


async def insert_many(
    conn: asyncpg.Connection, rows: list[tuple[datetime, str, str, str, str | None, int]]
) -> None:
    """(at, identifier, address, outcome, reason, attempts) rows in one COPY."""
    await conn.copy_records_to_table(
        "auth_events", records=rows, columns=["at", "identifier", "address", "outcome", "reason", "attempts"]
    )


async def prune(conn: asyncpg.Connection, older_than: timedelta) -> int:
    return await delete_in_batches(
        conn,
        """
        DELETE FROM auth_events WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM auth_events WHERE at < now() - $1::interval ORDER BY at LIMIT $2))
        """,
        older_than,
    )
