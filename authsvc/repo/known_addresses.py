"""Addresses an account has recently logged in from."""

from __future__ import annotations

from datetime import timedelta

import asyncpg


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
    result = await conn.execute(
        "DELETE FROM login_known_addresses WHERE last_success_at < now() - $1::interval", older_than
    )
    return int(result.split()[-1])
