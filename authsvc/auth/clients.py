"""Registered OAuth2 clients: services with identities of their own (client_credentials)."""

from __future__ import annotations

from authsvc.db.pool import Database
from authsvc.db.repo import clients as client_repo


class Clients:
    def __init__(self, pool: Database) -> None:
        self._pool = pool

    async def live_scopes(self, client_id: str) -> frozenset[str] | None:
        """The scopes an enabled client may have now; None when it is disabled or gone."""
        async with self._pool.acquire() as conn:
            scopes = await client_repo.select_live_scopes(conn, client_id)
        return frozenset(scopes) if scopes is not None else None
