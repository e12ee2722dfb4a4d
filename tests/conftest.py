"""Shared fixtures: one real PostgreSQL database per test run, an app and a client per test.

The server is AUTHSVC_TEST_DATABASE_URL when set (any database on it: the run creates its
own database beside it and drops it at the end), else an embedded PostgreSQL in a
temporary directory. With AUTHSVC_TEST_PGBOUNCER=1 the apps and servers the tests start
reach it through a real PgBouncer in transaction mode (tests/pgbouncer.py), migrations
and the tests' own look at the rows still directly.

Every log record of the run (authsvc's at DEBUG) is also written, formatted as in
production, to one file that is searched for secrets when the run ends: see run_log.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import bcrypt
import pgbouncer
import pytest
import servers
from aiohttp import (
    TraceConfig,
    TraceRequestChunkSentParams,
    TraceRequestStartParams,
    web,
)
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from helpers import PASSWORD, bearer, login, operator_env, signup
from servers import SERVER_LOGS

from authsvc.app import create_app
from authsvc.appkeys import SETTINGS
from authsvc.auth.keyring import KeyFile
from authsvc.cli import main as cli
from authsvc.db import embedded, migrate
from authsvc.observability.logs import JsonFormatter
from authsvc.settings import Settings

TABLES = "api_keys, client_assertions, client_secrets, clients, todos, refresh_tokens, sessions, login_backoff, login_budgets, login_known_addresses, auth_events, users"


def _with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


# Shapes of secrets that must never reach a log line, whatever test made them.
SECRET_SHAPES = {
    "access token (JWT)": re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}"),
    "refresh token": re.compile(r"rt_[A-Za-z0-9_-]{16,}"),
    "client secret": re.compile(r"cs_[A-Za-z0-9_-]{16,}"),
    "API key": re.compile(r"ak_[A-Za-z0-9_-]{16,}"),  # its shown prefix (ak_ + 8) is no secret
    "bcrypt hash": re.compile(r"\$2[aby]\$\d\d\$"),
    "private key": re.compile(r"PRIVATE KEY"),
}
# Shorter strings (the "p" of a too-short-password test) would match innocent text.
MIN_SECRET_CHARS = 8
# The password-policy tests send `password` as a password (and get 422): it is nobody's
# secret, and it is a word of the log's own text (/users/me/password), so not searched for.
NOT_SECRETS = frozenset({"password"})


class Secrets:
    """Every password, credential and server secret the tests used, to search the log for."""

    def __init__(self) -> None:
        self.values: set[str] = {PASSWORD}

    def add(self, value: object) -> None:
        if isinstance(value, str) and len(value.strip()) >= MIN_SECRET_CHARS and value not in NOT_SECRETS:
            self.values.add(value)

    def add_variables(self, variables: dict[str, str]) -> None:
        """The secrets among a server process's AUTHSVC_* variables."""
        for name, value in variables.items():
            if name in ("AUTHSVC_TOKEN_SECRET", "AUTHSVC_PASSWORD_PEPPER"):
                self.add(value)
            elif name == "AUTHSVC_INTROSPECTION_CLIENTS":
                for pair in value.split(","):
                    self.add(pair.partition(":")[2])
            elif name in ("AUTHSVC_DATABASE_URL", "AUTHSVC_MIGRATE_DATABASE_URL"):
                self.add(urllib.parse.urlsplit(value).password)

    def add_key_file(self, path: Path) -> None:
        """The private keys of a signing key file: each line of their PEM and their raw bytes."""
        for entry in json.loads(path.read_text(encoding="utf-8"))["keys"]:
            pem = entry["private_key"]
            for line in pem.splitlines():
                if not line.startswith("-----"):
                    self.add(line)
            private = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
            if isinstance(private, ed25519.Ed25519PrivateKey):
                raw = private.private_bytes(
                    serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                )
                self.add(base64.urlsafe_b64encode(raw).decode().rstrip("="))  # the JWK's "d"

    def add_settings(self, settings: Settings) -> None:
        self.add(settings.password_pepper)
        self.add(settings.token_secret)
        for _, secret in settings.introspection_clients:
            self.add(secret)

    def add_fields(self, data: object) -> None:
        """Values of password, token and secret fields, however deep in a JSON body."""
        if isinstance(data, dict):
            for key, value in data.items():
                if isinstance(value, str) and any(word in str(key) for word in ("password", "token", "secret")):
                    self.add(value)
                else:
                    self.add_fields(value)
        elif isinstance(data, list):
            for item in data:
                self.add_fields(item)

    def add_body(self, chunk: bytes) -> None:
        text = chunk.decode("utf-8", errors="replace")
        try:
            self.add_fields(json.loads(text))
            return
        except (ValueError, RecursionError):  # not JSON, or the deeply nested bodies of test_bad_input
            pass
        self.add_fields({k: v[0] for k, v in urllib.parse.parse_qs(text).items()})

    def leaks(self, path: Path) -> list[str]:
        found = []
        known = sorted(self.values, key=len, reverse=True)
        literal = re.compile("|".join(map(re.escape, known)))
        with path.open(encoding="utf-8") as log:
            for number, line in enumerate(log, 1):
                kinds = [kind for kind, shape in SECRET_SHAPES.items() if shape.search(line)]
                if literal.search(line):
                    kinds.append("a password or secret the tests used")
                if kinds:
                    found.append(f"line {number}: {', '.join(kinds)}: {line[:300]}")
        return found


SECRETS = Secrets()


@pytest.fixture(scope="session", autouse=True)
def run_log() -> Iterator[Path]:
    """Write every log record of the run to a file; fail the run if a secret is in it."""
    # Not under pytest's basetemp: concurrent runs prune each other's there. Kept if it leaks.
    fd, name = tempfile.mkstemp(prefix="authsvc-test-log-", suffix=".jsonl")
    os.close(fd)
    path = Path(name)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    ours = logging.getLogger("authsvc")
    # DEBUG so that debug logging cannot hide a leak; aiohttp's access log is off in
    # production (the observe middleware replaces it), so off here too.
    quiet = logging.getLogger("aiohttp.access")
    levels = (ours.level, quiet.level)
    ours.setLevel(logging.DEBUG)
    quiet.setLevel(logging.WARNING)
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        ours.setLevel(levels[0])
        quiet.setLevel(levels[1])
    for _, variables in SERVER_LOGS:
        SECRETS.add_variables(variables)
    leaks = SECRETS.leaks(path)
    # What the server processes the tests started wrote, searched the same way.
    for server_log, _ in SERVER_LOGS:
        if server_log.exists():
            leaks += [f"{server_log}: {leak}" for leak in SECRETS.leaks(server_log)]
    if not leaks and not os.environ.get("AUTHSVC_TEST_KEEP_LOG"):
        path.unlink()
    if leaks:
        pytest.fail(f"{len(leaks)} log line(s) of this run hold secrets (log: {path}):\n" + "\n".join(leaks[:20]))


def _secret_tracer() -> TraceConfig:
    """Notes the passwords, tokens and credentials test clients send."""

    async def on_start(session: Any, context: Any, params: TraceRequestStartParams) -> None:
        header = params.headers.get("Authorization")
        if header:
            scheme, _, credential = header.partition(" ")
            SECRETS.add(credential)
            if scheme.lower() == "basic":  # the secret as the server decodes it
                with contextlib.suppress(ValueError):
                    SECRETS.add(base64.b64decode(credential).decode("utf-8").partition(":")[2])

    async def on_chunk(session: Any, context: Any, params: TraceRequestChunkSentParams) -> None:
        SECRETS.add_body(params.chunk)

    trace = TraceConfig()
    trace.on_request_start.append(on_start)
    trace.on_request_chunk_sent.append(on_chunk)
    return trace


@pytest.fixture
def aiohttp_client(aiohttp_client: Any, database_url: str) -> Callable[..., Awaitable[TestClient]]:
    """pytest-aiohttp's, noting every secret the client sends and its app holds; the run's
    database is emptied first (an app made from base_settings uses it)."""

    async def make(app: Any, **kwargs: Any) -> TestClient:
        if isinstance(app, web.Application) and SETTINGS in app:
            SECRETS.add_settings(app[SETTINGS])
        kwargs["trace_configs"] = [*kwargs.get("trace_configs", ()), _secret_tracer()]
        return await aiohttp_client(app, **kwargs)

    return make


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A URL of a database on the server the tests may create databases on."""
    given = os.environ.get("AUTHSVC_TEST_DATABASE_URL")
    if given:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="authsvc-test-") as tmp:
        server = embedded.start_server(Path(tmp) / "pgdata", delete_on_exit=True)
        try:
            yield server.get_uri("postgres")
        finally:
            server.cleanup()


def _run_coroutine(coro: Any) -> Any:
    """asyncio.run, also from inside a running loop (on a helper thread): set-up code only."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def run_pgbouncer(pg_server_url: str) -> Iterator[pgbouncer.Bouncer | None]:
    """With AUTHSVC_TEST_PGBOUNCER=1: a PgBouncer in transaction mode in front of the run's
    server, which every app of base_settings and every quick_settings server goes through."""
    if os.environ.get("AUTHSVC_TEST_PGBOUNCER", "") in ("", "0"):
        yield None
        return
    if pgbouncer.binary() is None:
        pytest.fail(f"AUTHSVC_TEST_PGBOUNCER is set, but {pgbouncer.MISSING}")
    with pgbouncer.running(pg_server_url) as bouncer:
        servers.THROUGH_PGBOUNCER = bouncer.variables
        try:
            yield bouncer
        finally:
            servers.THROUGH_PGBOUNCER = None
        assert bouncer.logins() > 0, f"AUTHSVC_TEST_PGBOUNCER is set, but nothing connected through it ({bouncer.log})"


class Databases:
    """Creates throw-away databases on the test server and drops them all at the end.

    Behind the run's PgBouncer the pool cannot send statement_timeout, so each database gets
    it for the tests' role from PostgreSQL, as docs/operations.md#pgbouncer has it set up."""

    def __init__(self, server_url: str, *, role_statement_timeout: float | None = None) -> None:
        self.server_url = server_url
        self.role_statement_timeout = role_statement_timeout
        self.created: list[str] = []

    def create(self, *, migrated: bool = True) -> str:
        """A new database's URL; callable from sync and async code alike."""
        name = f"authsvc_test_{uuid.uuid4().hex[:12]}"
        _run_coroutine(self._create(name, migrated))
        self.created.append(name)
        return _with_database(self.server_url, name)

    async def _create(self, name: str, migrated: bool) -> None:
        conn = await asyncpg.connect(self.server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
            if self.role_statement_timeout is not None:
                ms = round(self.role_statement_timeout * 1000)
                await conn.execute(f"ALTER ROLE CURRENT_USER IN DATABASE \"{name}\" SET statement_timeout = '{ms}ms'")
        finally:
            await conn.close()
        if migrated:
            conn = await asyncpg.connect(_with_database(self.server_url, name))
            try:
                await migrate.migrate(conn)
            finally:
                await conn.close()

    async def _drop_all(self) -> None:
        conn = await asyncpg.connect(self.server_url)
        try:
            for name in self.created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def drop_all(self) -> None:
        _run_coroutine(self._drop_all())


@pytest.fixture(scope="session")
def databases(pg_server_url: str, run_pgbouncer: pgbouncer.Bouncer | None) -> Iterator[Databases]:
    dbs = Databases(pg_server_url, role_statement_timeout=Settings().db_statement_timeout if run_pgbouncer else None)
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def shared_database_url(databases: Databases) -> str:
    """The run's own migrated database, shared by the tests (see database_url)."""
    return databases.create()


@pytest.fixture
async def database_url(shared_database_url: str) -> str:
    """The run's database, emptied for this test: what every fixture on it asks for, so a test
    that needs no database (tests/unit) starts none."""
    conn = await asyncpg.connect(shared_database_url)
    try:
        await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    return shared_database_url


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A signing key file with one active EdDSA key, as `authsvc keys generate` makes it."""
    doc = KeyFile.load(tmp_path_factory.mktemp("keys") / "signing-keys.json")
    doc.generate("EdDSA", activate=True)
    doc.save()
    SECRETS.add_key_file(doc.path)
    return doc.path


@pytest.fixture(scope="session")
def base_settings(shared_database_url: str, keys_file: Path, run_pgbouncer: pgbouncer.Bouncer | None) -> Settings:
    # Cheap bcrypt and millisecond backoff: the rules are the same, the suite stays fast.
    settings = Settings(
        database_url=shared_database_url,
        signing_keys_file=keys_file,
        token_secret=secrets.token_urlsafe(48),
        password_pepper=secrets.token_urlsafe(48),
        bcrypt_rounds=4,
        hash_workers=2,
        login_backoff_base_ms=1,
        login_backoff_max_ms=8,
        # The account and address budgets get tests of their own; elsewhere they stay out of the way.
        account_max_failures_per_hour=10_000,
        address_max_failures_per_minute=100_000,
        signup_max_per_hour=100_000,
        db_pool_min=1,
        db_pool_max=10,
    )
    if run_pgbouncer is not None:
        return pgbouncer.ThroughPgBouncer.around(settings, run_pgbouncer)
    return settings


@pytest.fixture
def settings(base_settings: Settings, database_url: str) -> Settings:
    """The suite's settings, on the run's database emptied for this test."""
    return base_settings


@pytest.fixture(autouse=True)
def bcrypt_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail any test during which bcrypt ran on a thread with a running event loop."""
    offences: list[str] = []

    def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            try:
                asyncio.get_running_loop()
                offences.append(f"{fn.__name__} on {threading.current_thread().name}")
            except RuntimeError:
                pass
            return fn(*args)

        return wrapper

    monkeypatch.setattr(bcrypt, "hashpw", guard(bcrypt.hashpw))
    monkeypatch.setattr(bcrypt, "checkpw", guard(bcrypt.checkpw))
    yield offences
    assert not offences, f"bcrypt ran on the event loop: {offences}"


@pytest.fixture
def app(settings: Settings) -> web.Application:
    return create_app(settings)


@pytest.fixture
async def client(aiohttp_client: Any, app: web.Application) -> TestClient:
    return await aiohttp_client(app)


@pytest.fixture
def make_client(aiohttp_client: Any, settings: Settings) -> Callable[..., Awaitable[TestClient]]:
    """Start another app on the run's database, with some settings changed."""

    async def make(**changes: Any) -> TestClient:
        return await aiohttp_client(create_app(settings.replace(**changes)))

    return make


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection, to look at (or age) rows the way the service left them."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def user_token(client: TestClient) -> str:
    """A signed-up user's access token."""
    await signup(client, "owner@example.com")
    return await login(client, "owner@example.com")


@pytest.fixture
async def auth(user_token: str) -> dict[str, str]:
    return bearer(user_token)


@pytest.fixture
def authsvc(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Awaitable[tuple[int, str, str]]]:
    """`authsvc ARGS` in this process (on a thread: it runs its own event loop), with an
    operator's environment (helpers.operator_env); (code, out, err)."""
    for var in [v for v in os.environ if v.startswith("AUTHSVC_") and not v.startswith("AUTHSVC_TEST_")]:
        monkeypatch.delenv(var)
    for var, value in operator_env(settings, tmp_path).items():
        if var.startswith("AUTHSVC_"):
            monkeypatch.setenv(var, value)

    async def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call
