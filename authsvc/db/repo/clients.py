"""OAuth2 clients, their secrets and the assertions they used."""

from __future__ import annotations

import asyncpg


async def select_live_scopes(conn: asyncpg.Connection, client_id: str) -> list[str] | None:
    """The allowed scopes of an enabled client, None when it is disabled or does not exist."""
    return await conn.fetchval("SELECT scopes FROM clients WHERE id = $1 AND disabled_at IS NULL", client_id)
