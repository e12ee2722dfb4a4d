"""The database behind one app: an asyncpg pool whose waits are all bounded, and that outlives outages.

asyncpg waits forever by default: for a pooled connection, for a new one, for a statement.
Here each wait has a setting (AUTHSVC_DB_*_TIMEOUT). The app starts whether or not the
database answers; until the schema is checked (or migrated) and the pool is open, `acquire()`
raises NotReady, which is answered 503, and a background task keeps trying. An outage is
logged once when first seen and once when it is over, never once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TypeVar

import asyncpg

from authsvc.db import migrate
from authsvc.settings import ConfigError, Settings, env_name

log = logging.getLogger(__name__)
T = TypeVar("T")

# While the database is missing at start: first retry after RETRY_FIRST, doubling up to RETRY_MAX.
RETRY_FIRST = 0.1
RETRY_MAX = 2.0
# The client-side bound on a statement is a little longer than the server's statement_timeout,
# so the server cancels first (a clean error) and the client only gives up on a silent server.
CLIENT_MARGIN = 1.0


class NotReady(Exception):
    """The database has not answered since start, or its schema is not ready yet."""


# Errors that mean "the database is not reachable or not answering in time", not "the
# request is wrong": answered 503 with Retry-After. Whole branches of asyncpg's hierarchy,
# not one name per incident: a server going away mid-statement raises from any of them
# (an InternalClientError "cannot switch to state ..." while a connection is torn down, say).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    NotReady,
    OSError,  # includes TimeoutError: no pooled connection, or no answer, in time
    asyncpg.InterfaceError,  # client side: the connection closed or in a wrong state, a closed pool
    asyncpg.InternalClientError,  # the protocol's state machine, torn down under a statement
    asyncpg.PostgresConnectionError,  # 08xxx
    asyncpg.InvalidAuthorizationSpecificationError,  # 28xxx: the database refuses our role now
    asyncpg.InsufficientResourcesError,  # 53xxx: too many connections, out of memory or disk
    asyncpg.OperatorInterventionError,  # 57xxx: statement_timeout, shutting down, starting up
    asyncpg.PostgresSystemError,  # 58xxx: I/O errors on the server
    asyncpg.InternalServerError,  # XX000: the server's own failure
    # 25006: a standby after a failover, read-only until it is promoted
    asyncpg.ReadOnlySQLTransactionError,
    # 3D000 / 42P01: the database or its schema gone (restored or recreated empty)
    asyncpg.InvalidCatalogNameError,
    asyncpg.UndefinedTableError,
)

# Errors that mean "try the transaction again": class 40 (deadlock, serialization failure)
# and 55P03 (a NOWAIT lock). Retried a few times where they can happen, then answered 503;
# they are load, not an outage, so they do not count as one.
CONTENTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.TransactionRollbackError,
    asyncpg.LockNotAvailableError,
)
# Tries of a transaction that PostgreSQL rolled back for contention, and the first pause.
CONTENTION_TRIES = 4
CONTENTION_PAUSE = 0.005


class Contended(Exception):
    """PostgreSQL rolled the transaction back for contention on every try."""


async def in_transaction(conn: asyncpg.Connection, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `work` in a transaction on `conn`; retry it after a deadlock or serialization
    failure (with a short random pause), and raise Contended when every try met one."""
    for tries in range(1, CONTENTION_TRIES + 1):
        try:
            async with conn.transaction():
                return await work(conn)
        except CONTENTION_ERRORS as exc:
            # Worth a line: the login path takes its rows in one order, so a deadlock there
            # is a bug to report, and serialization failures should stay rare.
            log.warning("transaction rolled back (%s, SQLSTATE %s), try %d of %d", type(exc).__name__,
                        getattr(exc, "sqlstate", "?"), tries, CONTENTION_TRIES)
            if tries == CONTENTION_TRIES:
                raise Contended(type(exc).__name__) from exc
            await asyncio.sleep(random.uniform(1, 2) * CONTENTION_PAUSE * 2 ** tries)
    raise AssertionError("unreachable")


def _connection_lost(exc: BaseException) -> bool:
    """The server or the way to it failed (not merely a slow statement or a full pool)."""
    if isinstance(exc, (NotReady, TimeoutError, asyncpg.QueryCanceledError, asyncpg.InsufficientResourcesError)):
        return False
    return isinstance(exc, UNAVAILABLE_ERRORS)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Database:
    """The app's pool, with bounded waits, closed to requests until the schema is ready."""

    def __init__(self, settings: Settings) -> None:
        assert settings.database_url is not None, "resolve the database URL before creating the app"
        self._settings = settings
        self.pool: asyncpg.Pool | None = None
        self.ready = False
        self._down_since: float | None = None  # loop time of the first failure of this outage
        self._failures = 0  # requests that failed during this outage
        self._expired = False  # the pool's connections were replaced during this outage
        # One permit per pooled connection, taken before asking the pool: asyncio's Semaphore
        # queues a newcomer behind those already waiting, where the pool's own queue lets a
        # newcomer take a connection just given back from under the waiter it was woken for
        # (who then queues again at the back): under load that made a p99 of seconds.
        self._turns = asyncio.Semaphore(settings.db_pool_max)

    def acquire(self) -> _Acquire:
        """`async with db.acquire() as conn:` a pooled connection, within the acquire timeout."""
        return _Acquire(self)

    async def open(self) -> None:
        """Check or apply the migrations, then open the pool; raises whatever the database said."""
        s = self._settings
        if s.migrate_on_start:
            conn = await connect_for_migrations(s)
        else:  # only a look at schema_migrations, where the pool's statements will go
            conn = await _connect_as_pool(s)
        try:
            await prepare_schema(conn, s.migrate_on_start)
        finally:
            await conn.close(timeout=s.db_connect_timeout)
        if s.db_pgbouncer:
            await check_pool_connection(s)
        if self.pool is None:
            try:
                self.pool = await create_pool(s)
            except asyncpg.ProtocolViolationError as exc:
                raise _refused_parameter(exc, migrating=False) from exc
        self.ready = True

    async def keep_trying(self) -> None:
        """Retry open() with a capped backoff until the database answers and the schema is ready."""
        delay = RETRY_FIRST
        last_problem = ""
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            try:
                await self.open()
            except UNAVAILABLE_ERRORS:
                continue  # the outage is logged already
            except Exception as exc:  # e.g. pending migrations with AUTHSVC_MIGRATE_ON_START off
                if str(exc) != last_problem:
                    log.error("the database answers but is not ready: %s; retrying", _describe(exc))
                    last_problem = str(exc)
                continue
            self._recovered()
            return

    async def close(self) -> None:
        """Close the pool: connections still in use get a statement's time to come back; a
        database that does not answer the goodbye is cut off, never waited for."""
        if self.pool is None:
            return
        s = self._settings
        try:
            async with asyncio.timeout(s.db_statement_timeout + CLIENT_MARGIN):
                await self.pool.close()
        except (TimeoutError, *UNAVAILABLE_ERRORS) as exc:
            log.warning("database pool closed without the database's goodbye (%s)", _describe(exc))
            self.pool.terminate()

    @property
    def down(self) -> bool:
        return self._down_since is not None

    async def failed(self, exc: BaseException, *, silent_server: bool = False) -> None:
        """Note a failure: the first of an outage is logged; stale connections are dropped.

        `silent_server`: a statement got no answer at all, past the server's own timeout,
        which only a vanished server or network does (a full pool times out on acquire)."""
        self._failures += 1
        if self._down_since is None:
            self._down_since = asyncio.get_running_loop().time()
            log.warning("database unavailable (%s): answering 503 until it is back", _describe(exc))
        # After a restart or failover the idle connections are dead, and some may not know it
        # yet (no FIN from a vanished host): replace them all, once, rather than fail a request each.
        if (silent_server or _connection_lost(exc)) and self.pool is not None and not self._expired:
            self._expired = True
            await self.pool.expire_connections()

    def _recovered(self) -> None:
        if self._down_since is None:
            return
        seconds = asyncio.get_running_loop().time() - self._down_since
        log.warning("database available again after %.1f s (%d requests failed meanwhile)", seconds, self._failures)
        self._down_since = None
        self._failures = 0
        self._expired = False


class _Acquire:
    """The pool's acquire context, bounded, reporting failures and recovery to the Database."""

    __slots__ = ("_db", "_ctx", "_conn", "_while_down")

    def __init__(self, db: Database) -> None:
        self._db = db

    async def __aenter__(self) -> asyncpg.Connection:
        db = self._db
        if db.pool is None or not db.ready:
            raise NotReady("the database is not ready")
        # A connection taken during an outage is a new one (the old ones were expired): if the
        # work on it succeeds, the outage is over.
        self._while_down = db.down
        # asyncio.timeout rather than acquire(timeout=...): asyncpg bounds that with wait_for,
        # a task per acquire, which cost about 5% of a simple read's CPU time.
        self._ctx = db.pool.acquire()
        turns = db._turns
        taken = False
        try:
            if not turns.locked():
                # A connection is free (a permit is, and each permit has its connection in
                # the pool's queue): taken at once, so no timer to arm and cancel; opening one
                # anew is bounded by the connect timeout.
                taken = await turns.acquire()
                self._conn: asyncpg.Connection = await self._ctx.__aenter__()
            else:
                async with asyncio.timeout(db._settings.db_acquire_timeout):
                    taken = await turns.acquire()
                    self._conn = await self._ctx.__aenter__()
        except BaseException as exc:
            if taken:
                turns.release()
            if isinstance(exc, UNAVAILABLE_ERRORS):
                await db.failed(exc)
            raise
        return self._conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        db = self._db
        if isinstance(exc, TimeoutError):
            # The server did not answer, not even to cancel: drop the connection now rather
            # than wait as long again for the cancellation in the pool's reset.
            self._conn.terminate()
        try:
            await self._ctx.__aexit__(exc_type, exc, tb)
        except UNAVAILABLE_ERRORS as release_exc:
            await db.failed(release_exc)
            raise
        finally:
            db._turns.release()  # the connection is back in the pool's queue, or gone
        if exc is None:
            if self._while_down:
                db._recovered()
        elif isinstance(exc, UNAVAILABLE_ERRORS):
            # A TimeoutError here is from a statement (acquiring was done), so the client-side
            # bound ran out: the server did not even cancel it.
            await db.failed(exc, silent_server=isinstance(exc, TimeoutError))


async def create_pool(s: Settings) -> asyncpg.Pool:
    # asyncpg logs each failed attempt to refill the pool; the outage is logged here once instead.
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
    return await asyncpg.create_pool(
        s.database_url,
        min_size=s.db_pool_min,
        max_size=s.db_pool_max,
        timeout=s.db_connect_timeout,  # opening a connection
        command_timeout=s.db_statement_timeout + CLIENT_MARGIN,  # a server that went silent
        statement_cache_size=s.statement_cache_size,  # 0 behind a PgBouncer before 1.21
        server_settings=pool_parameters(s),
        reset=keep_session,
    )


# --- PgBouncer ---
# In transaction mode PgBouncer hands each transaction (each statement outside one) to any
# of its server connections, so nothing may outlive a transaction on a pooled connection:
# no SET, advisory lock, LISTEN, temporary table, held cursor or (before PgBouncer 1.21)
# named prepared statement. It also refuses every startup parameter it does not know, and
# statement_timeout is one of them. So behind it (AUTHSVC_DB_PGBOUNCER) the pool sends
# application_name alone and keeps no prepared statements unless told to, the statement
# timeout is the role's (ALTER ROLE ... SET statement_timeout), checked at open, and the
# migrations, which hold a session-level lock, connect to PostgreSQL directly
# (AUTHSVC_MIGRATE_DATABASE_URL). docs/operations.md#pgbouncer says how to set it up.
APPLICATION_NAME = "authsvc"


def statement_ms(s: Settings) -> int:
    return round(s.db_statement_timeout * 1000)


def pool_parameters(s: Settings) -> dict[str, str]:
    """The startup parameters of a pooled connection."""
    if s.db_pgbouncer:
        return {"application_name": APPLICATION_NAME}
    return {"application_name": APPLICATION_NAME, "statement_timeout": str(statement_ms(s))}


def _refused_parameter(exc: asyncpg.ProtocolViolationError, *, migrating: bool) -> BaseException:
    """PgBouncer's refusal of a startup parameter, as the setting to change; other protocol
    errors as they are."""
    if "unsupported startup parameter" not in str(exc):
        return exc
    if migrating:
        return ConfigError(
            env_name("migrate_database_url"),
            f"the database the migrations connect to refused a startup parameter ({exc}), as PgBouncer does:"
            " migrations need a direct connection to PostgreSQL; set AUTHSVC_MIGRATE_DATABASE_URL to it",
        )
    return ConfigError(
        env_name("db_pgbouncer"),
        f"AUTHSVC_DATABASE_URL refused a startup parameter ({exc}), as PgBouncer does: behind PgBouncer set"
        " AUTHSVC_DB_PGBOUNCER=true (see docs/operations.md#pgbouncer)",
    )


async def _connect_as_pool(s: Settings) -> asyncpg.Connection:
    """One connection as the pool opens them (same URL, parameters and statement cache)."""
    try:
        return await asyncpg.connect(
            s.database_url,
            timeout=s.db_connect_timeout,
            statement_cache_size=s.statement_cache_size,
            server_settings=pool_parameters(s),
        )
    except asyncpg.ProtocolViolationError as exc:
        raise _refused_parameter(exc, migrating=False) from exc


async def connect_for_migrations(s: Settings) -> asyncpg.Connection:
    """A connection of its own for migrating: AUTHSVC_MIGRATE_DATABASE_URL (else the service's
    URL), direct, free of the statement timeout, a role's included: a migration may take
    long, and waiting for another replica's migration lock is expected."""
    if s.db_pgbouncer and s.migrate_database_url is None:
        raise ConfigError(
            env_name("migrate_database_url"),
            "must be set while AUTHSVC_DB_PGBOUNCER is true: migrations hold a session-level lock, and need a"
            " direct connection to PostgreSQL, not one through PgBouncer",
        )
    try:
        return await asyncpg.connect(
            s.migrate_url,
            timeout=s.db_connect_timeout,
            server_settings={"application_name": APPLICATION_NAME, "statement_timeout": "0"},
        )
    except asyncpg.ProtocolViolationError as exc:
        raise _refused_parameter(exc, migrating=True) from exc


async def check_pool_connection(s: Settings) -> None:
    """One connection as the pool opens them, so that a misconfiguration is said once: a
    PgBouncer's refusal of a startup parameter, as the setting to change; behind PgBouncer,
    a statement timeout PostgreSQL does not apply."""
    conn = await _connect_as_pool(s)
    try:
        if s.db_pgbouncer:
            await _check_statement_timeout(conn, s)
    finally:
        await conn.close(timeout=s.db_connect_timeout)


async def _check_statement_timeout(conn: asyncpg.Connection, s: Settings) -> None:
    """Behind PgBouncer the pool cannot send statement_timeout: refuse to serve unless
    PostgreSQL applies one, no longer than AUTHSVC_DB_STATEMENT_TIMEOUT, to the pool's role."""
    row = await conn.fetchrow(
        "SELECT setting::bigint AS ms, current_user AS role, current_database() AS db"
        " FROM pg_settings WHERE name = 'statement_timeout'"
    )
    assert row is not None
    wanted = statement_ms(s)
    if 0 < row["ms"] <= wanted:
        return
    found = "none (0)" if row["ms"] == 0 else f"{row['ms']} ms"
    role, database = (str(row[k]).replace('"', '""') for k in ("role", "db"))
    raise ConfigError(
        env_name("db_statement_timeout"),
        f"behind PgBouncer the statement timeout must come from PostgreSQL, and its statement_timeout for"
        f" this role and database is {found}, not at most {wanted} ms: run"
        f" ALTER ROLE \"{role}\" IN DATABASE \"{database}\" SET statement_timeout = '{wanted}ms'"
        " (see docs/operations.md#pgbouncer)",
    )


async def keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection without asyncpg's reset query, a round trip per request.

    That query (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`) undoes
    session state, and pooled connections never get any: no advisory lock (migrations take
    theirs on a connection of their own), no LISTEN, no cursor outside a transaction, no SET
    but the start-up settings, which RESET ALL would not undo anyway (tests/unit/test_pooled_sql.py
    keeps it so, as PgBouncer's transaction mode needs too). What could leak, an open
    transaction, asyncpg still ends locally before this is called (ROLLBACK, only then).
    """


async def prepare_schema(conn: asyncpg.Connection, apply: bool) -> None:
    if apply:
        await migrate.migrate(conn)
        return
    todo = await migrate.pending(conn)
    if todo:
        raise migrate.MigrationError(
            f"{len(todo)} migration(s) pending: run `authsvc migrate` first"
        )


async def _finish_opening(db: Database, opening: asyncio.Task[None]) -> None:
    """An open() that outlasted the start-up wait: see it through, else keep trying."""
    try:
        await opening
    except UNAVAILABLE_ERRORS as exc:
        await db.failed(exc)
    except Exception as exc:  # past start-up nothing can stop the start: say it, retry
        log.error("the database answers but is not ready: %s; retrying", _describe(exc))
    else:
        log.warning("database ready: serving")
        return
    await db.keep_trying()


@contextlib.asynccontextmanager
async def opened(s: Settings) -> AsyncIterator[Database]:
    """The database of these settings, open or opening, for the time of the block."""
    db = Database(s)
    background: asyncio.Task[None] | None = None
    # Waiting for another instance's migration lock (or a long migration) must not keep the
    # port closed: past this the app serves, 503 until the database is ready. A
    # misconfiguration the database reports within it still stops the start.
    start_wait = s.db_connect_timeout + s.db_statement_timeout
    opening = asyncio.create_task(db.open())
    await asyncio.wait({opening}, timeout=start_wait)
    if not opening.done():
        log.warning(
            "database not ready after %.1f s (a migration, or another instance's): answering 503 until it is",
            start_wait,
        )
        background = asyncio.create_task(_finish_opening(db, opening))
    elif isinstance(error := opening.exception(), UNAVAILABLE_ERRORS):
        # Start anyway: /healthz answers, /readyz and everything else say 503 until it is back.
        await db.failed(error)
        background = asyncio.create_task(db.keep_trying())
    else:
        opening.result()  # opened, or a misconfiguration the database reported: raised here
    try:
        yield db
    finally:
        await _close(db, background, opening)


async def _close(db: Database, *tasks: asyncio.Task[None] | None) -> None:
    for task in tasks:
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, *UNAVAILABLE_ERRORS):
                await task
    await db.close()  # waits (within a bound) for connections still in use to come back
    log.info("database pool closed")
