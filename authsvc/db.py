"""The asyncpg pool, opened and closed with the application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from . import migrate
from .keys import POOL, SETTINGS

log = logging.getLogger(__name__)

# Errors that mean "the database is not reachable right now", not "the request is wrong".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


async def create_pool(dsn: str, min_size: int, max_size: int) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"application_name": "authsvc"},
    )


async def prepare_schema(pool: asyncpg.Pool, apply: bool) -> None:
    async with pool.acquire() as conn:
        if apply:
            await migrate.migrate(conn)
            return
        todo = await migrate.pending(conn)
        if todo:
            raise migrate.MigrationError(
                f"{len(todo)} migration(s) pending and AUTHSVC_MIGRATE_ON_START is off: run `authsvc migrate`"
            )


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    assert settings.database_url is not None, "resolve the database URL before creating the app"
    pool = await create_pool(settings.database_url, settings.db_pool_min, settings.db_pool_max)
    try:
        await prepare_schema(pool, settings.migrate_on_start)
    except BaseException:
        await pool.close()
        raise
    app[POOL] = pool
    yield
    await pool.close()  # waits for connections still in use to come back
    log.info("database pool closed")
