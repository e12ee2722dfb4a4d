"""Forward-only migrations: order, one transaction each, advisory lock, refusal when the database is ahead."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiohttp import web

from authsvc.app import create_app
from authsvc.db import migrate
from authsvc.db.migrate import MigrationError


async def _versions(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        await conn.close()


async def _migrate(url: str, directory=None) -> list[migrate.Migration]:
    conn = await asyncpg.connect(url)
    try:
        return await migrate.migrate(conn, directory)
    finally:
        await conn.close()


async def _start_fails(app: web.Application, match: str) -> None:
    with pytest.raises(MigrationError, match=match):
        await web.AppRunner(app).setup()
    await app.cleanup()  # what did start (the hash threads) is closed again


async def test_fresh_database_gets_every_migration_once(databases):
    url = databases.create(migrated=False)
    applied = await _migrate(url)
    known = migrate.discover()
    assert [m.version for m in applied] == [m.version for m in known]
    assert await _versions(url) == [m.version for m in known]
    assert await _migrate(url) == []


async def test_parallel_replicas_migrate_once(databases):
    url = databases.create(migrated=False)
    results = await asyncio.gather(*(_migrate(url) for _ in range(6)))
    # Exactly one runner applied each migration; the others found nothing left to do.
    assert sorted(len(r) for r in results) == [0] * 5 + [len(migrate.discover())]
    assert await _versions(url) == [m.version for m in migrate.discover()]


async def test_failed_migration_leaves_nothing_behind(databases, tmp_path):
    url = databases.create(migrated=False)
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE first_table (id int);")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE half_done (id int); SELECT 1/0;")
    with pytest.raises(asyncpg.DivisionByZeroError):
        await _migrate(url, tmp_path)
    assert await _versions(url) == [1]
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert await conn.fetchval("SELECT to_regclass('first_table')") is not None
        # The advisory lock was released: another runner can take it at once.
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", migrate.LOCK_ID)
    finally:
        await conn.close()


async def test_database_ahead_of_code_is_refused(databases, base_settings):
    url = databases.create()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'from_the_future')")
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match="9999"):
        await _migrate(url)
    await _start_fails(create_app(base_settings.replace(database_url=url)), "newer than this code")


async def test_pending_migrations_block_start_when_auto_migrate_is_off(databases, aiohttp_client, base_settings):
    url = databases.create(migrated=False)
    await _start_fails(create_app(base_settings.replace(database_url=url, migrate_on_start=False)), "authsvc migrate")
    client = await aiohttp_client(create_app(base_settings.replace(database_url=url)))
    assert (await client.get("/readyz")).status == 200


def test_badly_named_files_are_refused(tmp_path):
    (tmp_path / "1_init.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_name.sql"):
        migrate.discover(tmp_path)


def test_duplicate_numbers_are_refused(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="share a number"):
        migrate.discover(tmp_path)
