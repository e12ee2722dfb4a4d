"""Addresses an account has recently logged in from."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from authsvc.db.repo import delete_in_batches


async def is_known(conn: asyncpg.Connection, identifier: str, address: str, max_age: timedelta) -> bool:
    return bool(
        await conn.fetchval(
            """
            SELECT true FROM login_known_addresses
             WHERE identifier = $1 AND address = $2 AND last_success_at > now() - $3::interval
            """,
            identifier,
            address,
            max_age,
        )
    )


async def remember(conn: asyncpg.Connection, identifier: str, address: str) -> None:
    await conn.execute(
        """
        INSERT INTO login_known_addresses (identifier, address) VALUES ($1, $2)
        ON CONFLICT (identifier, address) DO UPDATE SET last_success_at = now()
        """,
        identifier,
        address,
    )


async def prune(conn: asyncpg.Connection, older_than: timedelta) -> int:
    return await delete_in_batches(
        conn,
        """
        DELETE FROM login_known_addresses WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM login_known_addresses WHERE last_success_at < now() - $1::interval
             ORDER BY last_success_at LIMIT $2 FOR UPDATE SKIP LOCKED))
        """,
        older_than,
    )
