"""authsvc behind a real PgBouncer in transaction mode (the Debian package, 1.18 on Debian 12).

PgBouncer hands each transaction to any of its server connections and refuses startup
parameters it does not know. Here: `serve --workers 2` through it, migrating over the
direct URL; `authsvc migrate` refusing the pooled one; the statement timeout, which the
pool cannot send through it, coming from the role and still holding.
"""

from __future__ import annotations

import re

import aiohttp
import asyncpg
import pgbouncer
import pytest
from helpers import PASSWORD
from servers import free_port, quick_settings, run_command, serving

from authsvc.db import migrate, pool
from authsvc.db.migrate import MigrationError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bouncer(pg_server_url):
    if pgbouncer.binary() is None:
        pytest.skip(pgbouncer.MISSING)
    with pgbouncer.running(pg_server_url) as running:
        yield running


async def _direct(url: str, sql: str, *args) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def _role_timeout(url: str, ms: int) -> None:
    """What docs/operations.md#pgbouncer has the operator run: the role's timeout in that database."""
    name = pgbouncer.database_of(url)
    await _direct(url, f"ALTER ROLE CURRENT_USER IN DATABASE \"{name}\" SET statement_timeout = '{ms}ms'")


def _behind(bouncer: pgbouncer.Bouncer, url: str, **extra: str) -> dict[str, str]:
    return {**quick_settings(url, **extra), **bouncer.variables(url)}


def _one_line(result, var: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"authsvc: {var}: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


async def test_two_workers_behind_pgbouncer_migrate_directly_and_serve(bouncer, databases, tmp_path):
    url = databases.create(migrated=False)  # the parent migrates over the direct URL
    await _role_timeout(url, 5000)
    logins = bouncer.logins()
    settings = _behind(bouncer, url, AUTHSVC_WORKERS="2", AUTHSVC_DB_POOL_MAX="3")
    async with serving(tmp_path, **settings) as served:
        base = served.base
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "/users", json={"email": "pgb@example.com", "password": PASSWORD}) as resp:
                assert resp.status == 201, await resp.text()
        # A new connection for every request, so both workers (each with its own pool of
        # named statements, were there a statement cache) answer some.
        for _ in range(6):
            async with aiohttp.ClientSession() as http:
                body = {"username": "pgb@example.com", "password": PASSWORD}
                async with http.post(base + "/auth", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    pair = await resp.json()
                me = {"Authorization": f"Bearer {pair['access_token']}"}
                async with http.get(base + "/users/me", headers=me) as resp:
                    assert resp.status == 200 and (await resp.json())["email"] == "pgb@example.com"
                async with http.post(base + "/auth/refresh", json={"refresh_token": pair["refresh_token"]}) as resp:
                    assert resp.status == 200, await resp.text()
                    renewed = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
                async with http.post(base + "/auth/logout", headers=renewed) as resp:
                    assert resp.status == 204
                async with http.get(base + "/users/me", headers=renewed) as resp:
                    assert resp.status == 401  # the session ended, through PgBouncer too
    assert served.proc.returncode == 0, served.output
    out = served.output
    assert out.count("applied migration") == len(migrate.discover()), out
    assert "Traceback" not in out and "prepared statement" not in out, out
    assert await _direct(url, "SELECT count(*) FROM schema_migrations") == len(migrate.discover())
    assert bouncer.logins() > logins  # the workers' pools did connect through it


async def test_migrate_uses_the_direct_url_and_refuses_a_pooled_one(bouncer, databases):
    url = databases.create(migrated=False)
    done = run_command("migrate", **bouncer.variables(url))
    assert done.returncode == 0, done.stderr
    assert "0001_init" in done.stdout
    # Pointed at the PgBouncer, the migration connection's own startup parameter is refused,
    # and the command says which setting is missing.
    other = databases.create(migrated=False)
    refused = run_command("migrate", AUTHSVC_DATABASE_URL=bouncer.through(other))
    assert refused.returncode == 2
    assert "need a direct connection" in _one_line(refused, "AUTHSVC_MIGRATE_DATABASE_URL")
    assert await _direct(other, "SELECT to_regclass('schema_migrations') IS NULL")


async def test_a_migration_lock_is_never_taken_through_a_pooler(bouncer, databases):
    # A PgBouncer told to drop the parameter (ignore_startup_parameters) lets the connection
    # through: the migrations still see that it is not a direct one, before taking their lock.
    url = databases.create(migrated=False)
    conn = await asyncpg.connect(bouncer.through(url), statement_cache_size=0)
    try:
        with pytest.raises(MigrationError, match="AUTHSVC_MIGRATE_DATABASE_URL"):
            await migrate.migrate(conn)
    finally:
        await conn.close()
    held = "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE locktype = 'advisory'"
    assert await _direct(url, held + " AND d.datname = current_database()") == 0
    assert await _direct(url, "SELECT to_regclass('schema_migrations') IS NULL")
    direct = await asyncpg.connect(url)
    try:
        assert len(await migrate.migrate(direct)) == len(migrate.discover())
    finally:
        await direct.close()


def test_without_the_switch_the_pgbouncer_is_named_in_one_line(bouncer, databases):
    url = databases.create()
    settings = {k: v for k, v in quick_settings(url).items() if k not in bouncer.variables(url)}
    settings.update(AUTHSVC_DATABASE_URL=bouncer.through(url), AUTHSVC_MIGRATE_DATABASE_URL=url)
    result = run_command("serve", "--port", str(free_port()), "--workers", "2", **settings)
    assert result.returncode == 2, result.stderr
    line = _one_line(result, "AUTHSVC_DB_PGBOUNCER")
    assert "unsupported startup parameter: statement_timeout" in line and "AUTHSVC_DB_PGBOUNCER=true" in line


async def test_the_statement_timeout_holds_through_pgbouncer(bouncer, databases, base_settings):
    url = databases.create()
    # Without a timeout from PostgreSQL, the service refuses to serve, naming the command to run.
    settings = _behind(bouncer, url, AUTHSVC_DB_STATEMENT_TIMEOUT="0.1")
    refused = run_command("serve", "--port", str(free_port()), "--workers", "2", **settings)
    assert refused.returncode == 2, refused.stderr
    line = _one_line(refused, "AUTHSVC_DB_STATEMENT_TIMEOUT")
    command = re.search(r"run (ALTER ROLE .*?'100ms')", line)
    assert command, line
    await _direct(url, command[1])
    await bouncer.reconnect()  # server connections opened before keep the settings they started with

    service = base_settings.replace(
        database_url=bouncer.through(url), migrate_database_url=url, db_pgbouncer=True, db_statement_timeout=0.1
    )
    async with pool.opened(service) as database:
        assert database.ready
        async with database.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") == "100ms"
            # The server cancels it: not the client's own bound, a second later.
            with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout"):
                await conn.execute("SELECT pg_sleep(5)")
        async with database.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1  # the pooled connection is still good
    # Migrations, on their direct connection, are not bound by the role's timeout.
    conn = await pool.connect_for_migrations(service)
    try:
        assert await conn.fetchval("SHOW statement_timeout") == "0"
    finally:
        await conn.close()
