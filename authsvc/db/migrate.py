"""Forward-only SQL migrations: numbered files, one transaction each, under an advisory lock."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from authsvc.db import email_backfill

log = logging.getLogger(__name__)

# Any fixed number, shared by every replica: only one of them migrates at a time.
LOCK_ID = 0x61757468737663  # "authsvc"
# The SQLSTATE check_direct raises (class P0, PL/pgSQL errors; a code of our own).
NOT_DIRECT = "P0A01"
FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# What SQL cannot do for a migration, run right after its file and again at every later
# migrate, under the same lock, before the migrations that follow it: each step is
# idempotent and cheap once done.
STEPS: dict[tuple[int, str], Callable[[asyncpg.Connection], Awaitable[object]]] = {
    (6, "email_keys"): email_backfill.run,
}


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def default_dir() -> Path:
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "authsvc" / "migrations"


def discover(directory: Path | None = None) -> list[Migration]:
    directory = directory or default_dir()
    if not directory.is_dir():
        raise MigrationError(f"no migrations directory at {directory}")
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number")
    return found


async def _applied(conn: asyncpg.Connection) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


def _check_not_ahead(applied: set[int], known: list[Migration]) -> None:
    unknown = applied - {m.version for m in known}
    if unknown:
        newest = max(m.version for m in known) if known else 0
        raise MigrationError(
            f"the database has migration {max(unknown)}, newer than this code knows ({newest}); "
            "refusing to start: deploy the newer code"
        )


async def pending(conn: asyncpg.Connection, directory: Path | None = None) -> list[Migration]:
    """Migrations not yet applied; raises when the database is ahead of the code."""
    known = discover(directory)
    applied = await _applied(conn)
    _check_not_ahead(applied, known)
    return [m for m in known if m.version not in applied]


async def check_direct(conn: asyncpg.Connection) -> None:
    """Refuse a connection through a pooler such as PgBouncer, whose transaction mode would
    take the migration lock on one server connection and try to free it on another, leaving
    it held and every later migrate waiting for it.

    A pooler gives its clients process ids of its own (for cancelling), while PostgreSQL's
    is the backend's. Compared in one simple-protocol statement: no prepared statement,
    which a pooler in transaction mode could have mixed up before anything was found."""
    pid = int(conn.get_server_pid())
    try:
        await conn.execute(
            f"""
            DO $$ BEGIN
                IF pg_backend_pid() <> {pid} THEN
                    RAISE EXCEPTION 'not a direct connection' USING ERRCODE = '{NOT_DIRECT}';
                END IF;
            END $$
            """
        )
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) != NOT_DIRECT:
            raise
        raise MigrationError(
            "migrations need a direct connection to PostgreSQL, and this one goes through a connection pooler"
            " such as PgBouncer (its process id is not the server's): set AUTHSVC_MIGRATE_DATABASE_URL to the"
            " database itself"
        ) from None


async def migrate(conn: asyncpg.Connection, directory: Path | None = None) -> list[Migration]:
    """Apply pending migrations in order; return the ones applied."""
    known = discover(directory)
    await check_direct(conn)
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        applied = await _applied(conn)
        _check_not_ahead(applied, known)
        done = []
        for migration in known:
            if migration.version not in applied:
                sql = await asyncio.to_thread(migration.path.read_text, encoding="utf-8")
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                log.info("applied migration %04d_%s", migration.version, migration.name)
                done.append(migration)
            step = STEPS.get((migration.version, migration.name))
            if step is not None:
                await step(conn)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
