"""Flat as data grows: authsvc on a large database against the same on a small one, in one run.

    python -m bench.scale [--scale 1] [--database-url URL] [--requests 300] [--probe-seconds 3]
                          [--workers 1] [--bcrypt-rounds 4] [--jobs N] [--explain | --explain-only]
                          [--json bench-scale.json] [--keep-databases]

It makes two databases on one PostgreSQL (an embedded one in a temporary directory, or the
server of --database-url, where it creates `authsvc_scale_{large,small}_<run>` and drops them
at the end unless --keep-databases), migrates both, and fills them in SQL (generate_series,
one INSERT ... SELECT per chunk, over --jobs connections):

- large, at --scale 1: 1,000,000 users; 10,000,000 auth_events spread over 31 days (the
  30 kept and a day that the next prune removes), 70% of them real users' logins, 30% a
  botnet's guesses; 1,000,000 sessions, 70% ended (revoked or expired) over the last 8 days
  (7 kept, and again a day's worth to prune), with 1 to 3 refresh tokens each; 1,000,000
  login_backoff pairs and 1,000,000 login_budgets rows as a botnet leaves them (addresses and
  targeted accounts, touched over the last 30 minutes and 2 hours: half of each past its
  prune age; a twentieth of the addresses blocked); 1,000,000 login_known_addresses over 31
  days; todos for every tenth user (1 to 10 each); and, after the measured users sign up,
  one of them with 100,000 todos.
- small: the same schema and the same kinds of rows, a handful of each (--scale does not
  change it), and the same measured users, one with 40 todos.

Filler users have unique email keys and skeletons (computed in SQL, checked against
authsvc's own normalise on a sample) and a bcrypt-shaped hash that is no one's password; the
measured users sign up through the API. Both databases are then VACUUM ANALYZEd, as
autovacuum would leave them.

Then it starts one `authsvc serve` per database (bench/server.py, --workers each, bcrypt
cost --bcrypt-rounds: 4 by default, so that what is measured is the database's share, not
bcrypt's; the secrets are the run's own, so a restarted server knows the same users) and
measures on both, in alternating rounds (small, large, large, small, ...) so that the busy
machine's changes of speed weigh on both alike, one request at a time, --requests each:

- login: POST /auth (p50, p99);
- GET /users/me;
- GET /todos: the first page (20), the deepest page by offset, and the deepest page by
  `after=<id>` when the server has keyset pages (a 4xx answer to `after` means it has not:
  reported as not measured);
- signup: POST /users with a new email each time.

And each prune (the repo functions the housekeeping loops call, with the service's default
ages, run from here on a connection of its own while a fresh server serves): sessions,
auth_events, login_backoff, login_budgets, known addresses: how long the first run takes
(on the large database a day's worth of rows), its batches and the longest one, and whether
it blocks requests: the p99 of GET /users/me, one request every 10 ms, while the prune runs
(repeated until --probe-seconds have passed) against the same just before it.

--explain also prints the plan of every statement authsvc runs (bench/explain.py) on the
large database, with its time there, and flags any that reads a whole table; --explain-only
builds, prints the plans and stops.

Prints the table of small against large with the ratio and a verdict against 1.5x, and
writes everything to --json. A smoke run (`--scale 0.01 --requests 40 --probe-seconds 1`)
takes a minute; --scale 1 builds about 4 GB and takes much longer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from authsvc.auth.emails import normalise, skeleton
from authsvc.auth.sessions import KEEP_ENDED
from authsvc.auth.throttle.logins import prunes as throttle_prunes
from authsvc.auth.throttle.policy import Limits
from authsvc.db import migrate
from authsvc.db.repo import sessions as session_repo
from authsvc.http import schemas
from authsvc.settings import Settings

from . import explain
from .perf import machine
from .server import Service, authsvc_service, percentile

PASSWORD = "a scale benchmark user's passphrase"
LOGIN_USERS = 10  # measured users who log in, in turn
PAGE = 20
WARMUP = 10  # requests of each kind before any is counted
ROUNDS = 10  # alternating rounds per measurement
PROBE_INTERVAL = 0.01
TARGET = 1.5
CHUNK = 100_000  # rows per INSERT ... SELECT
# A server's own prune loop first runs 300 s after it starts (auth/throttle/logins.py): a
# measurement that would still run by then gets a fresh server.
FRESH_FOR = 240.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- sizes ---


@dataclass(frozen=True)
class Sizes:
    users: int
    auth_events: int
    sessions: int
    login_backoff: int
    login_budgets: int
    known_addresses: int
    todos: int  # of the one measured user who has todos

    @classmethod
    def large(cls, scale: float) -> Sizes:
        full = cls(1_000_000, 10_000_000, 1_000_000, 1_000_000, 1_000_000, 1_000_000, 100_000)
        small = cls.small()
        return cls(**{f.name: max(getattr(small, f.name), round(getattr(full, f.name) * scale)) for f in fields(cls)})

    @classmethod
    def small(cls) -> Sizes:
        return cls(10, 50, 10, 10, 10, 10, 2 * PAGE)


# --- building the databases ---

FIRST_NAMES = (
    "ada alan anna ben carla chen david elena emma farid grace hana ivan jamal julia kofi lars lea "
    "liam maria mateo nadia noah olga omar priya rosa sami sofia tariq ulla wei yara zoe"
).split()
LAST_NAMES = (
    "adams baker becker chen costa diaz dubois evans fischer garcia haddad ito jensen kim kowalski "
    "lopez martin meyer nakamura novak okafor olsen patel rossi santos schmidt silva smith tanaka "
    "weber wong yilmaz"
).split()
DOMAINS = "example.com example.org mail.example.net post.example.de corp.example inbox.example.co.uk".split()
REVOKED_REASONS = ("logout", "logout_all", "password_change", "refresh_token_reuse", "revoked", "disabled")
GUESSED_DOMAINS = ("example.com", "example.org", "mail.example.net")


def _words(values: Sequence[str]) -> str:
    """A SQL array literal of our own constants (checked: lower-case letters, dots, underscores)."""
    for value in values:
        if not re.fullmatch(r"[a-z._]+", value):
            raise ValueError(f"not a plain word: {value!r}")
    return "ARRAY[" + ", ".join(f"'{v}'" for v in values) + "]"


def _skeleton_sql(alphabet: str) -> str:
    """skeleton() of an ASCII address in SQL: each character's prototype (emails.py maps one
    character at a time, and no prototype is itself mapped), lower-cased."""
    single = {c: skeleton(c) for c in alphabet if len(skeleton(c)) == 1 and skeleton(c) != c}
    multi = {c: skeleton(c) for c in alphabet if len(skeleton(c)) > 1}
    expr = "lower(e)"
    if single:
        expr = f"translate({expr}, '{''.join(single)}', '{''.join(single.values())}')"
    for char, proto in multi.items():
        expr = f"replace({expr}, '{char}', '{proto}')"
    return expr


ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789.@"

# Helpers for the fill statements, per connection. h(i, salt): a non-negative 63-bit hash;
# f(i, salt): a fraction in [0, 1) from it. user_email(i): filler user i's address.
FUNCTIONS = [
    "CREATE FUNCTION pg_temp.h(i bigint, salt integer) RETURNS bigint IMMUTABLE LANGUAGE sql"
    " AS $$ SELECT hashint8extended(i, salt) & 9223372036854775807 $$",
    "CREATE FUNCTION pg_temp.f(i bigint, salt integer) RETURNS float8 IMMUTABLE LANGUAGE sql"
    " AS $$ SELECT (pg_temp.h(i, salt) % 1000000007)::float8 / 1000000007 $$",
    f"""CREATE FUNCTION pg_temp.user_email(i bigint) RETURNS text IMMUTABLE LANGUAGE sql AS $$
        SELECT ({_words(FIRST_NAMES)})[1 + (i % {len(FIRST_NAMES)})::int] || '.'
            || ({_words(LAST_NAMES)})[1 + ((i / {len(FIRST_NAMES)}) % {len(LAST_NAMES)})::int] || '.' || i
            || '@' || ({_words(DOMAINS)})[1 + ((i / 7) % {len(DOMAINS)})::int] $$""",
    f"CREATE FUNCTION pg_temp.skeleton(e text) RETURNS text IMMUTABLE LANGUAGE sql AS $$ SELECT {_skeleton_sql(ALPHABET)} $$",
    # A user's own address, and a bot's (a bijection of i on the 32-bit space: distinct per i).
    "CREATE FUNCTION pg_temp.home(i bigint) RETURNS text IMMUTABLE LANGUAGE sql"
    " AS $$ SELECT '10.' || (i >> 16) % 256 || '.' || (i >> 8) % 256 || '.' || i % 256 $$",
    """CREATE FUNCTION pg_temp.bot(i bigint) RETURNS text IMMUTABLE LANGUAGE sql AS $$
        SELECT (x >> 24) || '.' || (x >> 16) % 256 || '.' || (x >> 8) % 256 || '.' || x % 256
          FROM (SELECT (i * 2654435761) % 4294967296 AS x) s $$""",
    # What a bot types: an existing user's address half the time, else a guessed one.
    f"""CREATE FUNCTION pg_temp.target(i bigint, users bigint) RETURNS text IMMUTABLE LANGUAGE sql AS $$
        SELECT CASE WHEN pg_temp.h(i, 7) % 2 = 0 THEN pg_temp.user_email(1 + pg_temp.h(i, 8) % users)
                    ELSE 'guess.' || pg_temp.h(i, 9) % 100000 || '@'
                         || ({_words(GUESSED_DOMAINS)})[1 + (i % {len(GUESSED_DOMAINS)})::int] END $$""",
]

FILL_USERS = """
INSERT INTO users (id, email, email_key, email_skeleton, password_hash, first_name, last_name,
                   created_at, updated_at, disabled_at)
OVERRIDING SYSTEM VALUE
SELECT i, e.email, e.email, pg_temp.skeleton(e.email),
       '$2b$12$' || substr(md5(i::text) || md5((-i)::text), 1, 53),
       initcap(split_part(e.email, '.', 1)),
       CASE WHEN i % 4 <> 0 THEN initcap(split_part(e.email, '.', 2)) END,
       c.at, c.at + (now() - c.at) * pg_temp.f(i, 2),
       CASE WHEN i % 1000 = 0 THEN now() - interval '1 day' * pg_temp.f(i, 3) * 300 END
  FROM generate_series($1::bigint, $2::bigint) AS i
 CROSS JOIN LATERAL (SELECT pg_temp.user_email(i) AS email) e
 CROSS JOIN LATERAL (SELECT now() - interval '3 years' * (1 - i::float8 / $3) AS at) c
"""

# Ids in time order, as the service writes them; `at` spread over 31 days.
FILL_AUTH_EVENTS = """
INSERT INTO auth_events (id, at, identifier, address, outcome, reason, attempts)
OVERRIDING SYSTEM VALUE
SELECT i, now() - interval '31 days' * (1 - i::float8 / $3),
       CASE WHEN bot THEN pg_temp.target(i, $4) ELSE pg_temp.user_email(u) END,
       CASE WHEN bot THEN pg_temp.bot(i) ELSE pg_temp.home(u) END,
       o.outcome,
       CASE WHEN o.outcome = 'throttled'
            THEN (ARRAY['backoff', 'account', 'address'])[1 + (pg_temp.h(i, 12) % 3)::int] END,
       CASE WHEN o.outcome = 'throttled' THEN 1 + (pg_temp.h(i, 13) % 20)::int ELSE 1 END
  FROM generate_series($1::bigint, $2::bigint) AS i
 CROSS JOIN LATERAL (SELECT pg_temp.h(i, 10) % 100 < 30 AS bot, 1 + pg_temp.h(i, 11) % $4 AS u,
                            pg_temp.h(i, 14) % 100 AS roll) r
 CROSS JOIN LATERAL (SELECT CASE
        WHEN NOT bot THEN CASE WHEN roll < 85 THEN 'success' WHEN roll < 97 THEN 'failure' ELSE 'throttled' END
        ELSE CASE WHEN roll < 55 THEN 'failure' WHEN roll < 99 THEN 'throttled' ELSE 'busy' END
        END AS outcome) o
"""

# 30% live (begun within the 30-day lifetime, not revoked); 70% ended within the last 8 days:
# revoked (45%) or expired (25%). 1 to 3 refresh tokens each, all but the last used.
FILL_SESSIONS = f"""
WITH s AS (
    INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, revoked_at, revoked_reason)
    SELECT md5('session ' || i)::uuid, 1 + pg_temp.h(i, 20) % $3,
           t.created, t.created + (least(t.ended, now()) - t.created) * pg_temp.f(i, 23),
           t.created + interval '30 days', t.revoked,
           CASE WHEN t.revoked IS NOT NULL
                THEN ({_words(REVOKED_REASONS)})[1 + (pg_temp.h(i, 24) % {len(REVOKED_REASONS)})::int] END
      FROM generate_series($1::bigint, $2::bigint) AS i
     CROSS JOIN LATERAL (SELECT pg_temp.h(i, 21) % 100 AS roll,
                                now() - interval '8 days' * pg_temp.f(i, 22) AS ended_at) r
     CROSS JOIN LATERAL (SELECT
            CASE WHEN roll < 30 THEN now() - interval '30 days' * pg_temp.f(i, 25)
                 WHEN roll < 75 THEN ended_at - interval '30 days' * 0.99 * pg_temp.f(i, 25)
                 ELSE ended_at - interval '30 days' END AS created,
            CASE WHEN roll < 30 THEN 'infinity'::timestamptz ELSE ended_at END AS ended,
            CASE WHEN roll >= 30 AND roll < 75 THEN ended_at END AS revoked) t
    RETURNING id, created_at, last_used_at
)
INSERT INTO refresh_tokens (token_hash, session_id, issued_at, used_at)
SELECT sha256(convert_to(s.id::text || ' ' || k, 'UTF8')), s.id,
       s.created_at + (s.last_used_at - s.created_at) * (k - 1) / n,
       CASE WHEN k < n THEN s.created_at + (s.last_used_at - s.created_at) * k / n END
  FROM s
 CROSS JOIN LATERAL (SELECT 1 + abs(hashtext(s.id::text)) % 3 AS n) c
 CROSS JOIN LATERAL generate_series(1, c.n) AS k
"""

# A botnet's pairs: each bot address guessed a few times at one target, touched over the
# last 30 minutes (the prune forgets pairs quiet for 15).
FILL_LOGIN_BACKOFF = """
INSERT INTO login_backoff (identifier, address, failures, next_attempt_at, held_until, updated_at, in_flight)
SELECT pg_temp.target(i, $3), pg_temp.bot(i), b.failures,
       b.at + least(interval '0.5 seconds' * power(2, b.failures - 1), interval '30 seconds'), b.at, b.at, 0
  FROM generate_series($1::bigint, $2::bigint) AS i
 CROSS JOIN LATERAL (SELECT 1 + (pg_temp.h(i, 30) % 6)::int AS failures,
                            now() - interval '30 minutes' * pg_temp.f(i, 31) AS at) b
"""

# Its buckets: 60% addresses (a twentieth of them blocked for 15 minutes), 39% targeted
# accounts, 1% signup budgets; touched over the last 2 hours (the prune drops those idle for 1).
FILL_LOGIN_BUDGETS = """
INSERT INTO login_budgets (scope, key, tokens, updated_at, blocked_until)
SELECT k.scope,
       CASE WHEN k.scope = 'account'
            THEN CASE WHEN i <= $3 THEN pg_temp.user_email(i) ELSE 'guess.' || i || '@example.com' END
            ELSE pg_temp.bot(i) END,
       CASE k.scope WHEN 'account' THEN 20 WHEN 'address' THEN 6 ELSE 6 END * pg_temp.f(i, 41), k.at,
       CASE WHEN k.scope = 'address' AND pg_temp.h(i, 42) % 20 = 0 THEN k.at + interval '15 minutes'
            ELSE '-infinity' END
  FROM generate_series($1::bigint, $2::bigint) AS i
 CROSS JOIN LATERAL (SELECT CASE WHEN r < 60 THEN 'address' WHEN r < 99 THEN 'account' ELSE 'signup' END AS scope,
                            now() - interval '2 hours' * pg_temp.f(i, 43) AS at
                       FROM (SELECT pg_temp.h(i, 40) % 100 AS r) x) k
"""

# Where users logged in from, over 31 days (the prune forgets addresses unused for 30).
FILL_KNOWN_ADDRESSES = """
INSERT INTO login_known_addresses (identifier, address, last_success_at)
SELECT pg_temp.user_email(1 + (i - 1) % $3), pg_temp.home(i), now() - interval '31 days' * pg_temp.f(i, 50)
  FROM generate_series($1::bigint, $2::bigint) AS i
"""

# Every tenth filler user has 1 to 10 todos, so that the planner sees many owners.
FILL_OTHER_TODOS = """
INSERT INTO todos (owner_id, text, completed, created_at, updated_at)
SELECT u, 'todo ' || k || ' of user ' || u, (u + k) % 3 = 0, c.at, c.at
  FROM generate_series($1::bigint, $2::bigint) AS u
 CROSS JOIN LATERAL generate_series(1, 1 + (pg_temp.h(u, 61) % 10)::int) AS k
 CROSS JOIN LATERAL (SELECT now() - interval '1 year' * pg_temp.f(u * 16 + k, 62) AS at) c
 WHERE u % 10 = 0
"""

FILL_TODOS = """
INSERT INTO todos (owner_id, text, completed, created_at, updated_at)
SELECT $1, 'todo ' || i || ': ' || (ARRAY['buy milk', 'call the plumber', 'read the docs', 'renew the passport',
                                       'water the plants', 'file the expenses'])[1 + i % 6],
       i % 3 = 0, c.at, c.at + (now() - c.at) * pg_temp.f(i, 60)
  FROM generate_series(1, $2::bigint) AS i
 CROSS JOIN LATERAL (SELECT now() - interval '1 year' * (1 - i::float8 / $2) AS at) c
"""

TABLES = ("users", "auth_events", "sessions", "refresh_tokens", "login_backoff", "login_budgets",
          "login_known_addresses", "todos")


async def _connect(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    # Bulk loading: a crash here loses a benchmark database, nothing else.
    await conn.execute("SET synchronous_commit = off")
    for statement in FUNCTIONS:
        await conn.execute(statement)
    return conn


async def check_emails(conn: asyncpg.Connection) -> None:
    """The SQL forms of the filler addresses must be what authsvc itself makes of them."""
    rows = await conn.fetch(
        "SELECT pg_temp.user_email(i) AS email, pg_temp.skeleton(pg_temp.user_email(i)) AS skeleton"
        " FROM generate_series(1, 2000, 7) i"
    )
    for row in rows:
        address = normalise(row["email"])
        if (address.email, address.key, address.skeleton) != (row["email"], row["email"], row["skeleton"]):
            raise RuntimeError(f"filler address {row['email']}: authsvc makes {address}, the SQL {dict(row)}")


async def run_chunks(url: str, jobs: int, work: list[tuple[str, int, int, tuple[Any, ...]]]) -> None:
    """Run (sql, lo, hi, extra args) items over `jobs` connections."""
    queue: asyncio.Queue[tuple[str, int, int, tuple[Any, ...]]] = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)

    async def worker() -> None:
        conn = await _connect(url)
        try:
            while not queue.empty():
                sql, lo, hi, extra = queue.get_nowait()
                await conn.execute(sql, lo, hi, *extra)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(min(jobs, len(work)) or 1)))


def _chunks(sql: str, total: int, *extra: Any) -> list[tuple[str, int, int, tuple[Any, ...]]]:
    return [(sql, lo, min(total, lo + CHUNK - 1), extra) for lo in range(1, total + 1, CHUNK)]


async def build(url: str, sizes: Sizes, jobs: int, what: str) -> dict[str, Any]:
    """Fill a migrated, empty database with the filler rows; return what it took."""
    began = time.monotonic()
    conn = await _connect(url)
    try:
        await check_emails(conn)
    finally:
        await conn.close()
    n = sizes.users
    await run_chunks(url, jobs, _chunks(FILL_USERS, n, float(n)))
    log(f"{what}: {n:,} users in {time.monotonic() - began:.0f} s")
    work = (
        _chunks(FILL_AUTH_EVENTS, sizes.auth_events, float(sizes.auth_events), n)
        + _chunks(FILL_SESSIONS, sizes.sessions, n)
        + _chunks(FILL_LOGIN_BACKOFF, sizes.login_backoff, n)
        + _chunks(FILL_LOGIN_BUDGETS, sizes.login_budgets, n)
        + _chunks(FILL_KNOWN_ADDRESSES, sizes.known_addresses, n)
        + _chunks(FILL_OTHER_TODOS, n)
    )
    await run_chunks(url, jobs, work)
    conn = await _connect(url)
    try:
        for table, column in (("users", "id"), ("auth_events", "id")):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), (SELECT max({column}) FROM {table}))"
            )
    finally:
        await conn.close()
    filled = time.monotonic() - began
    log(f"{what}: filled in {filled:.0f} s")
    return {"fill_seconds": round(filled, 1)}


async def vacuum(url: str, jobs: int) -> float:
    """VACUUM ANALYZE every table, as autovacuum would have by now; then a checkpoint, so the
    measurements do not pay for writing out the fill."""
    began = time.monotonic()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for table in TABLES:
        queue.put_nowait(table)

    async def worker() -> None:
        conn = await asyncpg.connect(url)
        try:
            while not queue.empty():
                await conn.execute(f"VACUUM (ANALYZE) {queue.get_nowait()}")
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(jobs)))
    conn = await asyncpg.connect(url)
    try:
        with contextlib.suppress(asyncpg.PostgresError):  # needs pg_checkpoint on a server of one's own
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return time.monotonic() - began


async def table_sizes(url: str) -> dict[str, dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        out = {}
        for table in TABLES:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM " + table + ") AS rows, pg_total_relation_size($1::regclass) AS bytes",
                table,
            )
            out[table] = {"rows": row["rows"], "mib": round(row["bytes"] / 2**20, 1)}
        return out
    finally:
        await conn.close()


# --- the two databases ---


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@contextlib.asynccontextmanager
async def postgres(given: str | None) -> AsyncIterator[str]:
    """A URL of a server where databases may be created: the given one or an embedded one."""
    if given:
        yield given
        return
    from authsvc.db import embedded

    with tempfile.TemporaryDirectory(prefix="authsvc-scale-pg-") as tmp:
        server = await asyncio.to_thread(embedded.start_server, Path(tmp) / "pgdata", delete_on_exit=True)
        try:
            yield server.get_uri("postgres")
        finally:
            await asyncio.to_thread(server.cleanup)


@contextlib.asynccontextmanager
async def databases(server_url: str, run_id: str, keep: bool) -> AsyncIterator[dict[str, str]]:
    names = {kind: f"authsvc_scale_{kind}_{run_id}" for kind in ("small", "large")}
    admin = await asyncpg.connect(server_url)
    try:
        for name in names.values():
            await admin.execute(f'CREATE DATABASE "{name}"')  # our own names
        urls = {kind: _with_database(server_url, name) for kind, name in names.items()}
        for url in urls.values():
            conn = await asyncpg.connect(url)
            try:
                await migrate.migrate(conn)
            finally:
                await conn.close()
        yield urls
    finally:
        if not keep:
            for name in names.values():
                with contextlib.suppress(asyncpg.PostgresError):
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# --- servers ---


class Servers:
    """One `authsvc serve` per database, restarted when its own prune loop would soon run."""

    def __init__(self, urls: dict[str, str], settings: dict[str, str], workers: int) -> None:
        self.urls = urls
        self.settings = settings
        self.workers = workers
        self.stack = contextlib.AsyncExitStack()
        self.services: dict[str, Service] = {}
        self.started = 0.0

    async def fresh(self, kinds: Sequence[str] = ("small", "large"), force: bool = False) -> None:
        if not force and self.services and time.monotonic() - self.started < FRESH_FOR:
            return
        await self.stack.aclose()
        self.stack = contextlib.AsyncExitStack()
        starts = [
            self.stack.enter_async_context(authsvc_service(self.urls[k], workers=self.workers, **self.settings))
            for k in kinds
        ]
        self.services = dict(zip(kinds, await asyncio.gather(*starts), strict=True))
        self.started = time.monotonic()

    def base(self, kind: str) -> str:
        return self.services[kind].base

    async def close(self) -> None:
        await self.stack.aclose()


# --- measuring ---


@dataclass
class Latencies:
    samples: list[float] = field(default_factory=list)  # seconds

    def summary(self) -> dict[str, Any]:
        ms = [x * 1000 for x in self.samples]
        return {"samples": len(ms), "p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3)}


class Http:
    """One keep-alive connection per server; each call checks the status it expects."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(
        self, method: str, url: str, expect: int, token: str | None = None, body: Any = None
    ) -> tuple[float, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        started = time.perf_counter()
        async with self.session.request(method, url, json=body, headers=headers) as resp:
            data = await resp.read()
            elapsed = time.perf_counter() - started
            if resp.status != expect:
                raise RuntimeError(f"{method} {url}: {resp.status}, expected {expect}: {data[:300]!r}")
        return elapsed, json.loads(data) if data else None


Request = Callable[[str, int], Awaitable[float]]  # (kind, n-th call) -> seconds


async def alternate(kinds: Sequence[str], request: Request, count: int) -> dict[str, Latencies]:
    """`count` requests for each kind after a warm-up, in rounds small, large, large, small, ..."""
    for kind in kinds:
        for i in range(WARMUP):
            await request(kind, -1 - i)
    out = {kind: Latencies() for kind in kinds}
    per_round = max(1, math.ceil(count / ROUNDS))
    order = [kinds[0], kinds[1], kinds[1], kinds[0]] * math.ceil(ROUNDS / 4 + 1)
    done = dict.fromkeys(kinds, 0)
    for kind in order:
        for _ in range(per_round):
            if done[kind] >= count:
                break
            out[kind].samples.append(await request(kind, done[kind]))
            done[kind] += 1
        if all(n >= count for n in done.values()):
            break
    return out


@dataclass
class Users:
    """The measured users of one database: their emails, tokens, the todo owner's page ids."""

    logins: list[str]
    tokens: dict[str, str]
    todo_owner: str
    todo_count: int = 0
    deepest_after: int | None = None  # the id after which the last page begins


async def sign_up_measured(http: Http, base: str, run_id: str) -> Users:
    emails = [f"scale-{run_id}-login-{k}@bench.example" for k in range(LOGIN_USERS)]
    for email in emails:
        await http.call("POST", base + "/users", 201, body={"email": email, "password": PASSWORD})
    tokens = {}
    for email in emails:
        _, answer = await http.call("POST", base + "/auth", 200, body={"username": email, "password": PASSWORD})
        tokens[email] = answer["access_token"]
    return Users(emails, tokens, emails[0])


async def add_todos(url: str, users: Users, count: int) -> None:
    conn = await _connect(url)
    try:
        owner = await conn.fetchval("SELECT id FROM users WHERE email_key = $1", users.todo_owner)
        await conn.execute(FILL_TODOS, owner, count)
        await conn.execute("VACUUM (ANALYZE) todos")
        users.todo_count = await conn.fetchval("SELECT count(*) FROM todos WHERE owner_id = $1", owner)
        users.deepest_after = await conn.fetchval(
            "SELECT id FROM todos WHERE owner_id = $1 ORDER BY id OFFSET $2 LIMIT 1", owner, users.todo_count - PAGE - 1
        )
    finally:
        await conn.close()


def deepest_offset(users: Users) -> int:
    """The last page's offset, or the deepest the server takes where it caps offset."""
    cap = getattr(schemas, "MAX_OFFSET", None)
    return min(users.todo_count - PAGE, cap) if cap is not None else users.todo_count - PAGE


async def has_keyset(http: Http, base: str, users: Users) -> bool:
    """Whether GET /todos takes `after`: 200 with the page after that id, or a 4xx when not."""
    token = users.tokens[users.todo_owner]
    async with http.session.get(
        f"{base}/todos?limit={PAGE}&after={users.deepest_after}", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        if 400 <= resp.status < 500:
            await resp.read()
            return False
        if resp.status != 200:
            raise RuntimeError(f"GET /todos?after=: {resp.status} {await resp.text()}")
        page = await resp.json()
    if len(page) != PAGE or any(todo["id"] <= (users.deepest_after or 0) for todo in page):
        raise RuntimeError(f"GET /todos?after={users.deepest_after}: not the last page: {page[:2]}...")
    return True


async def measure_requests(
    servers: Servers, http: Http, users: dict[str, Users], count: int, run_id: str
) -> dict[str, Any]:
    kinds = ("small", "large")
    results: dict[str, Any] = {}

    def base(kind: str) -> str:
        return servers.base(kind)

    async def login(kind: str, n: int) -> float:
        email = users[kind].logins[n % LOGIN_USERS]
        seconds, _ = await http.call("POST", base(kind) + "/auth", 200, body={"username": email, "password": PASSWORD})
        return seconds

    async def me(kind: str, n: int) -> float:
        u = users[kind]
        return (await http.call("GET", base(kind) + "/users/me", 200, u.tokens[u.logins[1]]))[0]

    def todos(query: Callable[[Users], str]) -> Request:
        async def get(kind: str, n: int) -> float:
            u = users[kind]
            seconds, page = await http.call("GET", f"{base(kind)}/todos?{query(u)}", 200, u.tokens[u.todo_owner])
            if len(page) != PAGE:
                raise RuntimeError(f"/todos?{query(u)} on {kind}: {len(page)} todos, expected {PAGE}")
            return seconds

        return get

    async def signup(kind: str, n: int) -> float:
        email = f"scale-{run_id}-signup-{n if n >= 0 else 'warm' + str(-n)}@bench.example"
        return (await http.call("POST", base(kind) + "/users", 201, body={"email": email, "password": PASSWORD}))[0]

    keyset = all([await has_keyset(http, base(k), users[k]) for k in kinds])
    offsets = " / ".join(f"{deepest_offset(users[k]):,}" for k in kinds)
    measurements: list[tuple[str, Request | None]] = [
        ("login (POST /auth)", login),
        ("GET /users/me", me),
        ("GET /todos first page", todos(lambda u: f"limit={PAGE}")),
        (f"GET /todos deepest page by offset ({offsets})", todos(lambda u: f"limit={PAGE}&offset={deepest_offset(u)}")),
        ("GET /todos deepest page by after (keyset)", todos(lambda u: f"limit={PAGE}&after={u.deepest_after}")
         if keyset else None),
        ("signup (POST /users)", signup),
    ]
    for name, request in measurements:
        if request is None:
            log(f"{name}: not measured (the server refuses `after`: no keyset pages yet)")
            results[name] = None
            continue
        await servers.fresh()
        measured = await alternate(kinds, request, count)
        results[name] = {kind: lat.summary() for kind, lat in measured.items()}
        log(f"{name}: " + ", ".join(
            f"{k} p50 {v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms" for k, v in results[name].items()))
    return results


# --- pruning ---


class Timed:
    """Stands in for a connection in a prune: times each of its statements (batches)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.batches: list[float] = []

    def is_in_transaction(self) -> bool:
        return self.conn.is_in_transaction()

    async def execute(self, sql: str, *args: Any) -> str:
        started = time.perf_counter()
        result = await self.conn.execute(sql, *args)
        self.batches.append(time.perf_counter() - started)
        return result


def all_prunes(settings: Settings) -> dict[str, Callable[[Any], Awaitable[int]]]:
    """Each prune of the housekeeping loops, with the ages the service passes."""
    return {"sessions": lambda c: session_repo.prune(c, KEEP_ENDED), **throttle_prunes(Limits.from_settings(settings))}


async def probe(http: Http, base: str, token: str, until: Callable[[], bool]) -> Latencies:
    """GET /users/me every PROBE_INTERVAL until `until()`."""
    out = Latencies()
    while not until():
        out.samples.append((await http.call("GET", base + "/users/me", 200, token))[0])
        await asyncio.sleep(PROBE_INTERVAL)
    return out


async def measure_prune(
    url: str, base: str, http: Http, token: str, prune: Callable[[Any], Awaitable[int]], probe_seconds: float
) -> dict[str, Any]:
    """Quiet probe, then the prune (first run timed; repeated until probe_seconds have passed)
    while the probe goes on."""
    for _ in range(WARMUP):  # a fresh server prepares its statements first
        await http.call("GET", base + "/users/me", 200, token)
    quiet_until = time.monotonic() + probe_seconds
    quiet = await probe(http, base, token, lambda: time.monotonic() >= quiet_until)
    conn = await asyncpg.connect(url)
    try:
        done = asyncio.Event()
        during_task = asyncio.create_task(probe(http, base, token, done.is_set))
        began = time.monotonic()
        first = Timed(conn)
        deleted = await prune(first)
        first_seconds = time.monotonic() - began
        runs = 1
        while time.monotonic() - began < probe_seconds:
            await prune(Timed(conn))
            runs += 1
        done.set()
        during = await during_task
    finally:
        await conn.close()
    q, d = quiet.summary(), during.summary()
    return {
        "deleted": deleted,
        "seconds": round(first_seconds, 4),
        "batches": len(first.batches),
        "longest_batch_ms": round(max(first.batches) * 1000, 2) if first.batches else 0.0,
        "runs_while_probed": runs,
        "probe_without": q,
        "probe_during": d,
        "p99_during_over_without": round(d["p99_ms"] / q["p99_ms"], 3) if q["p99_ms"] else None,
    }


async def measure_prunes(
    servers: Servers, http: Http, users: dict[str, Users], probe_seconds: float
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, prune in all_prunes(Settings()).items():
        results[name] = {}
        for kind in ("small", "large"):
            await servers.fresh((kind,), force=True)  # its own prune loop far off
            u = users[kind]
            results[name][kind] = await measure_prune(
                servers.urls[kind], servers.base(kind), http, u.tokens[u.logins[1]], prune, probe_seconds
            )
            r = results[name][kind]
            log(f"prune {name} on {kind}: {r['deleted']:,} rows in {r['seconds']:.3f} s ({r['batches']} batches, "
                f"longest {r['longest_batch_ms']:.1f} ms); /users/me p99 {r['probe_without']['p99_ms']:.2f} ms "
                f"without, {r['probe_during']['p99_ms']:.2f} ms during")
    return results


# --- the table ---


def _ms(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.2f}"


def _ratio(large: float | None, small: float | None) -> float | None:
    if large is None or small is None or not small or math.isnan(large) or math.isnan(small):
        return None
    return large / small


def table(result: dict[str, Any]) -> list[list[str]]:
    rows = [["figure", "small", "large", "large/small", f"<= {TARGET}x"]]
    for name, both in result["requests"].items():
        for p in ("p50", "p99"):
            if both is None:
                rows.append([f"{name} {p} ms", "not measured", "not measured", "", ""])
                continue
            small, large = both["small"][f"{p}_ms"], both["large"][f"{p}_ms"]
            ratio = _ratio(large, small)
            rows.append([f"{name} {p} ms", _ms(small), _ms(large), "" if ratio is None else f"{ratio:.2f}x",
                         "" if ratio is None else "yes" if ratio <= TARGET else "NO"])
    for name, both in result["prunes"].items():
        s, lg = both["small"], both["large"]
        rows.append([f"prune {name}: rows, s (batches, longest ms)",
                     f"{s['deleted']:,}, {s['seconds']:.3f} ({s['batches']}, {s['longest_batch_ms']:.1f})",
                     f"{lg['deleted']:,}, {lg['seconds']:.3f} ({lg['batches']}, {lg['longest_batch_ms']:.1f})",
                     "", ""])
        for kind_name, kind in (("small", s), ("large", lg)):
            ratio = kind["p99_during_over_without"]
            rows.append([f"prune {name}: /users/me p99 ms without -> during, {kind_name}",
                         _ms(kind["probe_without"]["p99_ms"]), _ms(kind["probe_during"]["p99_ms"]),
                         "" if ratio is None else f"{ratio:.2f}x",
                         "" if ratio is None else "yes" if ratio <= TARGET else "NO"])
    return rows


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.rjust(w) if 0 < j < 4 else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths,
                                                                                              strict=True))).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


# --- the run ---


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = datetime.now(UTC)
    run_id = secrets.token_hex(3)
    large, small = Sizes.large(args.scale), Sizes.small()
    result: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "scale": args.scale,
        "sizes": {"small": asdict(small), "large": asdict(large)},
        "database": "given server" if args.database_url else "embedded PostgreSQL",
        "workers": args.workers,
        "bcrypt_rounds": args.bcrypt_rounds,
        "requests_per_figure": args.requests,
    }
    with tempfile.TemporaryDirectory(prefix="authsvc-scale-") as tmp:
        settings = {
            "AUTHSVC_BCRYPT_ROUNDS": str(args.bcrypt_rounds),
            # Every request comes from 127.0.0.1: budgets out of the way (the right password is
            # always used, and signups are what is measured).
            "AUTHSVC_ACCOUNT_MAX_FAILURES_PER_HOUR": "10000",
            "AUTHSVC_ADDRESS_MAX_FAILURES_PER_MINUTE": "100000",
            "AUTHSVC_SIGNUP_MAX_PER_HOUR": "100000",
            "AUTHSVC_ACCESS_TOKEN_TTL": "86400",
            # The run's own secrets: a restarted server knows the users and tokens of the last.
            "AUTHSVC_PASSWORD_PEPPER": secrets.token_urlsafe(48),
            "AUTHSVC_TOKEN_SECRET": secrets.token_urlsafe(48),
            "AUTHSVC_SIGNING_KEYS_FILE": str(Path(tmp) / "signing-keys.json"),
        }
        async with postgres(args.database_url) as server_url, databases(server_url, run_id, args.keep_databases) as urls:
            log(f"building the large database ({large}) and the small one ({small})")
            result["build"] = {
                "large": await build(urls["large"], large, args.jobs, "large"),
                "small": await build(urls["small"], small, args.jobs, "small"),
            }
            servers = Servers(urls, settings, args.workers)
            try:
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                    http = Http(session)
                    await servers.fresh(force=True)
                    users = {}
                    for kind, sizes in (("small", small), ("large", large)):
                        users[kind] = await sign_up_measured(http, servers.base(kind), run_id)
                        await add_todos(urls[kind], users[kind], sizes.todos)
                    for kind, url in urls.items():
                        seconds = await vacuum(url, args.jobs)
                        result["build"][kind]["vacuum_analyze_seconds"] = round(seconds, 1)
                        result["build"][kind]["tables"] = await table_sizes(url)
                    log(f"large: {result['build']['large']['tables']}")
                    if args.explain or args.explain_only:
                        result["explain"] = await explain.report(urls["large"], users["large"].todo_owner)
                        explain.print_report(result["explain"])
                    if args.explain_only:
                        return result
                    result["requests"] = await measure_requests(servers, http, users, args.requests, run_id)
                    result["prunes"] = await measure_prunes(servers, http, users, args.probe_seconds)
            finally:
                await servers.close()
    result["duration_seconds"] = round((datetime.now(UTC) - started).total_seconds())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="size of the large database (1: the full size)")
    parser.add_argument("--database-url", help="a PostgreSQL server to create the two databases on")
    parser.add_argument("--requests", type=int, default=300, help="requests per figure and database")
    parser.add_argument("--probe-seconds", type=float, default=3.0, help="length of each prune's probe windows")
    parser.add_argument("--workers", type=int, default=1, help="workers of each authsvc")
    parser.add_argument("--bcrypt-rounds", type=int, default=4, help="bcrypt cost of the measured users")
    parser.add_argument("--jobs", type=int, default=max(2, os.cpu_count() or 1), help="connections that fill")
    parser.add_argument("--explain", action="store_true", help="print the plans of authsvc's statements (large)")
    parser.add_argument("--explain-only", action="store_true", help="build, print the plans, measure nothing")
    parser.add_argument("--json", type=Path, default=Path("bench-scale.json"))
    parser.add_argument("--keep-databases", action="store_true", help="keep the two databases (--database-url)")
    args = parser.parse_args()
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    result = asyncio.run(run(args))
    if args.explain_only:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"written to {args.json}")
        return
    result["table"] = table(result)
    m = result["machine"]
    print(f"\nauthsvc at scale {args.scale:g}, {result['date']}, {m['cores']} cores ({m['cpu']}), "
          f"{result['database']}, {args.workers} worker(s), bcrypt cost {args.bcrypt_rounds}, "
          f"{args.requests} requests per figure\n")
    print_table(result["table"])
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
