"""Database faults, on a PostgreSQL of this module's own that the tests stop, freeze and start.

The server is the embedded PostgreSQL in a temporary directory, listening on a socket of its
own, apart from the suite's shared database. `pg_ctl stop -m immediate` is a crash (no
checkpoint, connections cut mid-statement); SIGSTOP to every server process is a database
that hangs without closing anything, which only timeouts can get out of.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import signal
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestClient
from helpers import PASSWORD, bearer, login, signup, wait_for
from servers import Cluster, quick_settings, serving, temporary_cluster

from authsvc.app import create_app
from authsvc.appkeys import POOL, THROTTLE, TOKENS
from authsvc.db import migrate
from authsvc.settings import Settings

psutil = pytest.importorskip("psutil", reason="comes with the embedded PostgreSQL (the `embedded` extra)")

pytestmark = pytest.mark.slow

# Small timeouts: a request that needs an absent or silent database must answer 503 within
# about acquire + statement (+ the client margin) + release, and a login may need two such
# round trips (its claim, then giving the claim back).
TIMEOUTS = {"db_connect_timeout": 0.5, "db_acquire_timeout": 0.5, "db_statement_timeout": 0.5}
BOUND = 5.0  # seconds within which every request must be answered, whatever the database does


class SilentHop:
    """A TCP hop in front of the server's socket. `silence()` makes the connections open
    through it go quiet, as behind a host or network that vanished: no FIN, no RST, nothing
    answers. Connections opened afterwards pass, as to the new primary of a failover."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.generation = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    def silence(self) -> None:
        self.generation += 1

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        born = self.generation
        server_r, server_w = await asyncio.open_unix_connection(self.socket_path)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    if self.generation == born:  # else swallowed
                        writer.write(data)
                        await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()  # one side hung up: so does the other

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with temporary_cluster("authsvc-faults-") as c:
        yield c


@pytest.fixture
async def running(cluster: Cluster) -> Cluster:
    """The cluster, started if an earlier test left it stopped or frozen."""
    if cluster.running():
        _resume(cluster.processes())
    else:
        await asyncio.to_thread(cluster.start)
    return cluster


@pytest.fixture
def start_app(aiohttp_client: Any, base_settings: Settings) -> Callable[..., Awaitable[TestClient]]:
    async def start(url: str, **changes: Any) -> TestClient:
        settings = base_settings.replace(database_url=url, db_pool_min=1, db_pool_max=5, **TIMEOUTS)
        return await aiohttp_client(create_app(settings.replace(**changes)))

    return start


async def _timed(call: Awaitable[Any]) -> tuple[Any, float]:
    started = time.monotonic()
    async with asyncio.timeout(BOUND):  # a hang fails the test here
        result = await call
    return result, time.monotonic() - started


async def _assert_unavailable(client: TestClient, method: str, path: str, **kwargs: Any) -> float:
    resp, elapsed = await _timed(client.request(method, path, **kwargs))
    body = await resp.json()
    assert resp.status == 503, (path, body)
    assert body["error"] == "unavailable" and body["message"], body
    assert int(resp.headers["Retry-After"]) >= 1
    return elapsed


async def _ready_within(client: TestClient, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (await client.get("/readyz")).status != 200:
        assert time.monotonic() < deadline, "not ready again in time"
        await asyncio.sleep(0.05)


def _db_log(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "authsvc.db.pool" and words in r.getMessage()]


async def test_starts_without_the_database_and_recovers_by_itself(running, start_app, caplog):
    caplog.set_level(logging.WARNING, logger="authsvc.db.pool")
    url = await running.create_database(migrated=False)
    await asyncio.to_thread(running.stop, "fast")

    client = await start_app(url)
    assert (await client.get("/healthz")).status == 200  # the process is alive
    await _assert_unavailable(client, "GET", "/readyz")
    someone = client.app[TOKENS].issue(1, uuid.uuid4(), frozenset({"profile"}))  # a well-signed token: only the database can judge it
    for _ in range(3):
        await _assert_unavailable(client, "POST", "/users", json={"email": "a@example.com", "password": PASSWORD})
        await _assert_unavailable(client, "POST", "/auth", json={"username": "a@example.com", "password": PASSWORD})
        await _assert_unavailable(client, "GET", "/users/me", headers=bearer(someone))

    await asyncio.to_thread(running.start)
    await _ready_within(client, 10)
    # The same app, never restarted: it migrated the new database and serves requests.
    await signup(client, "a@example.com")
    token = await login(client, "a@example.com")
    assert (await client.get("/users/me", headers=bearer(token))).status == 200
    conn = await asyncpg.connect(url)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
    finally:
        await conn.close()
    assert versions == [m.version for m in migrate.discover()]
    # One line for the outage and one for its end, not one per failed request.
    assert len(_db_log(caplog, "unavailable")) == 1, caplog.text
    assert len(_db_log(caplog, "available again")) == 1, caplog.text


async def test_pending_migrations_keep_it_unready_until_migrated(running, start_app, caplog):
    url = await running.create_database(migrated=False)
    await asyncio.to_thread(running.stop, "fast")
    client = await start_app(url, migrate_on_start=False)
    await _assert_unavailable(client, "GET", "/readyz")
    await asyncio.to_thread(running.start)
    # The database answers, but the schema is not there: still 503, said once in the log.
    deadline = time.monotonic() + 10
    while not any("authsvc migrate" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, caplog.text
        await asyncio.sleep(0.05)
    await _assert_unavailable(client, "GET", "/readyz")
    await _assert_unavailable(client, "POST", "/users", json={"email": "a@example.com", "password": PASSWORD})
    assert sum("authsvc migrate" in r.getMessage() for r in caplog.records) == 1, caplog.text
    conn = await asyncpg.connect(url)  # what an operator's `authsvc migrate` does
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()
    await _ready_within(client, 5)
    await signup(client, "a@example.com")


async def test_another_instances_migration_lock_does_not_keep_the_port_closed(running, start_app, caplog):
    url = await running.create_database(migrated=False)
    holder = await asyncpg.connect(url)  # another instance, migrating
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", migrate.LOCK_ID)
        async with asyncio.timeout(BOUND):
            client = await start_app(url)  # started: serving, not waiting for the lock
        assert (await client.get("/healthz")).status == 200
        await _assert_unavailable(client, "GET", "/readyz")
        await _assert_unavailable(client, "POST", "/users", json={"email": "a@example.com", "password": PASSWORD})
        assert any("not ready after" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        await holder.close()  # the other instance is done: the lock is free
    await _ready_within(client, 10)
    await signup(client, "a@example.com")


async def test_a_hung_database_answers_503_within_the_bounds(running, start_app):
    url = await running.create_database(migrated=True)
    client = await start_app(url)
    await signup(client, "a@example.com")
    token = await login(client, "a@example.com")
    frozen = running.processes()
    for proc in frozen:
        proc.suspend()  # SIGSTOP: connections stay open, nothing answers
    try:
        elapsed = [
            await _assert_unavailable(client, "GET", "/users/me", headers=bearer(token)),
            await _assert_unavailable(client, "POST", "/auth", json={"username": "a@example.com", "password": PASSWORD}),
            await _assert_unavailable(client, "POST", "/users", json={"email": "b@example.com", "password": PASSWORD}),
        ]
        await _assert_unavailable(client, "GET", "/readyz")
    finally:
        _resume(frozen)
    assert max(elapsed) < BOUND, elapsed
    await _ready_within(client, 10)
    assert (await client.get("/users/me", headers=bearer(token))).status == 200
    # The login that got 503 neither counted as a failure nor left the pair held.
    assert await login(client, "a@example.com")


async def test_logins_on_a_hung_database_do_not_queue_behind_each_other(running, start_app):
    """A claim an outage left unreturned is given back before the next login claims; while
    that give-back waits on a silent database, other logins answer 503 at once, not in turn."""
    url = await running.create_database(migrated=True)
    client = await start_app(url)
    await signup(client, "a@example.com")
    throttle = client.app[THROTTLE]
    held = await throttle.acquire("held@example.com", "127.0.0.1")
    frozen = running.processes()
    for proc in frozen:
        proc.suspend()
    try:
        await throttle.abandon(held, "error")  # the database does not answer: kept to give back
        assert throttle.unreturned

        def log_in(i: int) -> Awaitable[float]:
            body = {"username": f"u{i}@example.com", "password": PASSWORD}
            return _assert_unavailable(client, "POST", "/auth", json=body)

        one = await log_in(0)
        started = time.monotonic()
        await asyncio.gather(*(log_in(i) for i in range(1, 11)))
        ten = time.monotonic() - started
    finally:
        _resume(frozen)
    # Ten logins at once wait on the database about as long as one, not ten times as long.
    assert ten < 2 * one + 0.5, (one, ten)
    await _ready_within(client, 10)
    deadline = time.monotonic() + 5
    while throttle.owes_claims:  # given back by the background task once the database is back
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert await login(client, "a@example.com")


async def test_a_read_only_database_is_unavailable_not_an_error(running, start_app):
    """A failover that lands on a standby (read-only until promoted) answers 503, not 500."""
    url = await running.create_database(migrated=True)
    client = await start_app(url)
    await signup(client, "a@example.com")
    async with client.app[POOL].acquire() as conn:
        name = await conn.fetchval("SELECT current_database()")
    admin = await asyncpg.connect(running.admin_url)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        await client.app[POOL].pool.expire_connections()  # as after a failover: new connections
        await _assert_unavailable(client, "POST", "/users", json={"email": "b@example.com", "password": PASSWORD})
        await admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        await client.app[POOL].pool.expire_connections()
    finally:
        await admin.close()
    await signup(client, "b@example.com")


def _resume(frozen: list[Any]) -> None:
    """Thaw the children before the postmaster (it would see them frozen), and let a backend
    that ended meanwhile (the server's own connections closing) be."""
    import psutil

    for proc in reversed(frozen):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.resume()


async def test_sigterm_with_the_database_hung_exits_cleanly_within_its_bounds(running, tmp_path):
    url = await running.create_database(migrated=True)
    settings = quick_settings(
        url,
        AUTHSVC_DB_CONNECT_TIMEOUT="0.5",
        AUTHSVC_DB_ACQUIRE_TIMEOUT="0.5",
        AUTHSVC_DB_STATEMENT_TIMEOUT="0.5",
        AUTHSVC_SHUTDOWN_TIMEOUT="1",
        AUTHSVC_MIGRATE_ON_START="false",
    )
    async with serving(tmp_path, **settings) as served:
        frozen = running.processes()
        for proc in frozen:
            proc.suspend()
        try:
            started = time.monotonic()
            served.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(served.proc.wait, 30)
            took = time.monotonic() - started
        finally:
            _resume(frozen)
    assert code == 0, served.output[-3000:]
    # The shutdown deadline, then each wait on the database once: pending rows, the pool.
    assert took < 10, (took, served.output[-3000:])
    assert "pool closed without the database" in served.output


async def test_connections_to_a_vanished_server_are_replaced_at_the_first_silence(running, start_app):
    url = await running.create_database(migrated=True)
    port = int((running.server.pgdata / "postmaster.pid").read_text().splitlines()[3])
    hop = SilentHop(f"{running.socket_dir}/.s.PGSQL.{port}")
    hop_port = await hop.start()
    database = urllib.parse.urlsplit(url).path.lstrip("/")
    try:
        client = await start_app(f"postgresql://postgres@127.0.0.1:{hop_port}/{database}", db_pool_min=3, db_pool_max=3)
        await signup(client, "a@example.com")
        token = await login(client, "a@example.com")
        hop.silence()  # every pooled connection now leads nowhere
        await _assert_unavailable(client, "GET", "/users/me", headers=bearer(token))
        # That silence was enough: the pool dropped all its connections, not one per request.
        resp, took = await _timed(client.get("/users/me", headers=bearer(token)))
        assert resp.status == 200, await resp.text()
        assert took < TIMEOUTS["db_statement_timeout"], took
    finally:
        await hop.close()


async def test_restart_under_load_loses_nothing_and_counts_no_failures(running, start_app):
    url = await running.create_database(migrated=True)
    client = await start_app(url)
    workers = 6
    accounts = [f"user{i}@example.com" for i in range(workers)]
    tokens = []
    for email in accounts:
        await signup(client, email)
        tokens.append(await login(client, email))
    emails = (f"new{n}@example.com" for n in itertools.count())
    results: list[tuple[str, int, Any]] = []
    stop_load = asyncio.Event()

    async def worker(i: int) -> None:
        # One account per worker: its logins never overlap, so a 429 could only come from a
        # claim the outage left held.
        for step in itertools.count():
            if stop_load.is_set():
                return
            kind = ("signup", "login", "todo")[(step + i) % 3]
            if kind == "signup":
                email = next(emails)
                resp, _ = await _timed(client.post("/users", json={"email": email, "password": PASSWORD}))
                results.append((kind, resp.status, email))
            elif kind == "login":
                resp, _ = await _timed(client.post("/auth", json={"username": accounts[i], "password": PASSWORD}))
                body = await resp.json()
                results.append((kind, resp.status, body.get("access_token")))
            else:
                text = f"todo {i}-{step}"
                resp, _ = await _timed(client.post("/todos", json={"text": text}, headers=bearer(tokens[i])))
                body = await resp.json()
                results.append((kind, resp.status, (body.get("id"), text)))
            assert resp.status < 500 or resp.status == 503, (kind, resp.status, await resp.text())

    def answered(status: int) -> int:
        return sum(1 for _, s, _ in results if s == status)

    async def crash_and_restart() -> None:
        await wait_for(lambda: len(results) >= 10 * workers, 10, "load before the stop")
        await asyncio.to_thread(running.stop, "immediate")
        await wait_for(lambda: answered(503) >= workers, 10, "503s during the outage")
        await asyncio.to_thread(running.start)
        await _ready_within(client, 10)
        recovered = len(results)
        await wait_for(lambda: len(results) >= recovered + 10 * workers, 10, "load after the recovery")
        stop_load.set()

    await asyncio.gather(crash_and_restart(), *(worker(i) for i in range(workers)))

    statuses = collections.Counter((kind, status) for kind, status, _ in results)
    allowed = {("signup", 201), ("signup", 503), ("login", 200), ("login", 503), ("todo", 201), ("todo", 503)}
    assert set(statuses) <= allowed, statuses
    assert sum(n for (_, s), n in statuses.items() if s == 503) > 0, statuses  # the outage was seen
    assert all(statuses[k] > 0 for k in (("signup", 201), ("login", 200), ("todo", 201))), statuses

    conn = await asyncpg.connect(url)
    try:
        # Every write that was answered 2xx is there.
        created = [email for kind, status, email in results if kind == "signup" and status == 201]
        found = await conn.fetch("SELECT email, password_hash FROM users WHERE email = any($1::text[])", created)
        assert sorted(r["email"] for r in found) == sorted(created)
        todos = [t for kind, status, t in results if kind == "todo" and status == 201]
        rows = {r["id"]: r["text"] for r in await conn.fetch("SELECT id, text FROM todos")}
        assert all(rows.get(todo_id) == text for todo_id, text in todos), (todos, rows)
        sids = [jwt.decode(t, options={"verify_signature": False})["sid"] for k, s, t in results if k == "login" and s == 200]
        live = await conn.fetchval("SELECT count(*) FROM sessions WHERE id = any($1::uuid[])", sids)
        assert live == len(sids)
        # Nothing half-written: no user without a password hash, no session without its refresh token.
        assert await conn.fetchval("SELECT count(*) FROM users WHERE password_hash IS NULL OR password_hash = ''") == 0
        orphans = "SELECT count(*) FROM sessions s WHERE NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.session_id = s.id)"
        assert await conn.fetchval(orphans) == 0
        # Only right passwords were sent: the outage counted no failure for anyone.
        outcomes = {r["outcome"] for r in await conn.fetch("SELECT DISTINCT outcome FROM auth_events")}
        assert "failure" not in outcomes, outcomes
        assert await conn.fetchval("SELECT count(*) FROM login_backoff WHERE failures > 0") == 0
        # Claims the outage interrupted are given back once the database is back, not left held.
        deadline = time.monotonic() + 5
        while await conn.fetchval("SELECT count(*) FROM login_backoff WHERE held_until > now()"):
            assert time.monotonic() < deadline, "a login claim stayed held after the outage"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    for email in accounts:
        assert await login(client, email)  # 200 at once: no 429


async def test_stopping_the_server_under_read_load_answers_503_never_500(running, start_app):
    """`pg_ctl stop -m fast` under 16 clients looping over /users/me and /readyz: whatever
    asyncpg raises while its connections are torn down (connection errors, "cannot switch to
    state ..."), each answer is 200 or 503; once the server is back, everything answers 200."""
    url = await running.create_database(migrated=True)
    client = await start_app(url, db_pool_max=16)
    await signup(client, "reader@example.com")
    token = await login(client, "reader@example.com")
    statuses: collections.Counter[tuple[str, int]] = collections.Counter()
    bodies: list[str] = []
    phase = "before"
    stop_load = asyncio.Event()

    async def reader(i: int) -> None:
        path = "/users/me" if i % 2 else "/readyz"
        for _ in range(100_000):  # bounded; the event ends it first
            if stop_load.is_set():
                return
            resp, _ = await _timed(client.get(path, headers=bearer(token)))
            statuses[(phase, resp.status)] += 1
            if resp.status not in (200, 503):
                bodies.append(f"{path} {resp.status} {await resp.text()}")
            resp.release()

    async def stop_and_start() -> None:
        nonlocal phase
        await wait_for(lambda: statuses[("before", 200)] >= 160, 10, "load before the stop")
        phase = "outage"
        await asyncio.to_thread(running.stop, "fast")
        await wait_for(lambda: statuses[("outage", 503)] >= 16, 10, "503s during the outage")
        await asyncio.to_thread(running.start)
        await _ready_within(client, 10)
        phase = "after"
        await wait_for(lambda: statuses[("after", 200)] >= 160, 10, "load after the recovery")
        stop_load.set()

    await asyncio.gather(stop_and_start(), *(reader(i) for i in range(16)))
    assert bodies == [], bodies[:5]
    assert statuses[("outage", 503)] > 0, statuses  # the outage was seen
    assert statuses[("before", 200)] > 0 and statuses[("after", 200)] > 0, statuses
    # Once ready again, a request may still meet one connection that died with the server,
    # but never more than the pool had: then all is 200.
    assert statuses[("after", 503)] <= 16, statuses
    for _ in range(20):
        assert (await client.get("/users/me", headers=bearer(token))).status == 200
