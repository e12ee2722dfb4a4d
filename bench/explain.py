"""The plans of the statements authsvc runs, taken from the repo functions themselves.

`exercise(conn, sample)` calls each function of authsvc/db/repo that a request, a prune, the
email backfill or an operator command calls, in the order a login, a request, a refresh or a
signup calls them, through a stand-in connection that records every statement with its
arguments (and runs it, in a transaction that is rolled back at the end; the prunes are only
recorded). `plan(conn, statement)` EXPLAINs one as the service would run it: prepared, with
its generic or its custom plan (asyncpg prepares every statement, and PostgreSQL moves to
the generic plan after five runs when that looks no dearer). `scans(plan)` lists what it
reads and how.

Used by tests/api/test_plans.py (no hot statement may read a whole table, whatever the
table's size: with sequential scans discouraged, any left mean no index can serve it) and by
`python -m bench.scale --explain` (the plans on the large database, and each statement's
time there).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from authsvc.auth.emails import normalise
from authsvc.auth.sessions import KEEP_ENDED
from authsvc.auth.throttle.logins import prunes
from authsvc.auth.throttle.policy import Limits
from authsvc.db.repo import (
    api_keys,
    auth_events,
    clients,
    known_addresses,
    login_backoff,
    login_budgets,
    todos,
    users,
)
from authsvc.db.repo import sessions as session_repo
from authsvc.http.schemas import MAX_OFFSET
from authsvc.settings import Settings

# Tables that grow with use: a plan that reads one of them whole is what this looks for.
# (clients and client_secrets grow only with an operator's registrations and rotations,
# but a request reads them: they are held to the same rule.)
TABLES = frozenset({
    "users", "todos", "sessions", "refresh_tokens", "login_backoff", "login_budgets",
    "login_known_addresses", "auth_events", "api_keys", "client_assertions", "client_secrets",
    "clients",
})


@dataclass(frozen=True)
class Statement:
    path: str  # what runs it: "login", "request", "token", "refresh", "signup", "account", "prune", ...
    function: str  # the repo function, module.name
    sql: str
    args: tuple[Any, ...]
    hot: bool  # on a request path or in a housekeeping loop (not an operator's command)
    ms: float | None = None  # how long it took when it ran here


@dataclass
class Recorder:
    """Stands in for an asyncpg connection: records each statement, then runs it (or, with
    run False, answers as if nothing matched)."""

    conn: asyncpg.Connection
    statements: list[Statement] = field(default_factory=list)
    path: str = ""
    function: str = ""
    hot: bool = True
    run: bool = True

    def is_in_transaction(self) -> bool:
        return self.conn.is_in_transaction()

    def transaction(self) -> Any:
        return self.conn.transaction()

    async def _call(self, method: str, sql: str, args: tuple[Any, ...], nothing: Any) -> Any:
        started = time.perf_counter()
        result = await getattr(self.conn, method)(sql, *args) if self.run else nothing
        ms = (time.perf_counter() - started) * 1000 if self.run else None
        self.statements.append(Statement(self.path, self.function, sql, args, self.hot, ms))
        return result

    async def execute(self, sql: str, *args: Any) -> str:
        return await self._call("execute", sql, args, "NOTHING 0")

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._call("fetch", sql, args, [])

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self._call("fetchrow", sql, args, None)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._call("fetchval", sql, args, None)

    async def copy_records_to_table(self, table: str, **kwargs: Any) -> str:
        return "COPY 0"  # a COPY has no plan


@dataclass(frozen=True)
class Sample:
    """Rows the statements are run against: a user with a live session, a refresh token and
    a todo; the address they log in from."""

    user_id: int
    email: str
    session_id: uuid.UUID
    token_hash: bytes
    todo_id: int
    todo_count: int
    address: str = "192.0.2.10"


async def sample(conn: asyncpg.Connection, email: str) -> Sample:
    """The sample of the user with this email (its key), who has a session and a todo."""
    row = await conn.fetchrow(
        """
        SELECT u.id, u.email, s.id AS session_id, t.token_hash,
               (SELECT min(id) FROM todos WHERE owner_id = u.id) AS todo_id,
               (SELECT count(*) FROM todos WHERE owner_id = u.id) AS todo_count
          FROM users u JOIN sessions s ON s.user_id = u.id JOIN refresh_tokens t ON t.session_id = s.id
         WHERE u.email_key = $1 AND s.revoked_at IS NULL
         ORDER BY s.created_at DESC, t.issued_at DESC
         LIMIT 1
        """,
        email,
    )
    if row is None or row["todo_id"] is None:
        raise RuntimeError(f"{email}: no user with a live session and a todo")
    return Sample(row["id"], row["email"], row["session_id"], row["token_hash"], row["todo_id"], row["todo_count"])


async def exercise(conn: asyncpg.Connection, s: Sample, settings: Settings | None = None) -> list[Statement]:
    """Every statement of the repo functions' callers, recorded (and run, then rolled back)."""
    settings = settings or Settings()
    lim = Limits.from_settings(settings)
    rec = Recorder(conn)
    key = s.email.lower()
    idle = timedelta(seconds=settings.session_idle_timeout)
    live = session_repo.LiveSession(s.session_id, s.user_id, idle)
    grace = timedelta(seconds=settings.refresh_reuse_grace)
    new_session = uuid.uuid4()
    # A client with a secret and an API key of the sample user, made by their own inserts
    # below (so a database that has none, like bench/scale.py's, is planned all the same).
    client_id = "cl_" + secrets.token_hex(8)
    secret_hash = hashlib.sha256(secrets.token_bytes(32)).digest()
    key_id = uuid.uuid4()
    key_hash = hashlib.sha256(secrets.token_bytes(32)).digest()

    def step(path: str, function: str, hot: bool = True, run: bool = True) -> Recorder:
        rec.path, rec.function, rec.hot, rec.run = path, function, hot, run
        return rec

    calls: list[tuple[str, str, bool, bool, Callable[[Recorder], Awaitable[object]]]] = [
        # A login: the three budgets, the account, the outcome, the session (auth/throttle/claims.py).
        ("login", "login_budgets.take", True, True,
         lambda c: login_budgets.take(c, "address", s.address, lim.address.capacity, lim.address.rate)),
        ("login", "login_backoff.held_full", True, True,
         lambda c: login_backoff.held_full(c, key, s.address, lim.failure_window, 4)),
        ("login", "login_backoff.claim", True, True,
         lambda c: login_backoff.claim(c, key, s.address, timedelta(seconds=15), lim.failure_window, 4)),
        ("login", "known_addresses.is_known", True, True,
         lambda c: known_addresses.is_known(c, key, s.address, lim.known_address_age)),
        ("login", "login_budgets.take", True, True,
         lambda c: login_budgets.take(c, "account", key, lim.account.capacity, lim.account.rate)),
        ("login", "users.select_by_email", True, True, lambda c: users.select_by_email(c, s.email)),
        ("login", "login_backoff.record_failure", True, True,
         lambda c: login_backoff.record_failure(c, key, s.address, lim.backoff_base, lim.backoff_cap)),
        ("login", "login_backoff.closed_for", True, True, lambda c: login_backoff.closed_for(c, key, s.address)),
        ("login", "login_budgets.seconds_until_token", True, True,
         lambda c: login_budgets.seconds_until_token(c, "account", key, lim.account.capacity, lim.account.rate)),
        ("login", "login_budgets.block", True, True,
         lambda c: login_budgets.block(c, "address", s.address, lim.address_block)),
        ("login", "login_backoff.release", True, True, lambda c: login_backoff.release(c, key, s.address)),
        ("login", "login_backoff.reset", True, True, lambda c: login_backoff.reset(c, key, s.address)),
        ("login", "known_addresses.remember", True, True, lambda c: known_addresses.remember(c, key, s.address)),
        ("login", "login_budgets.give_back", True, True,
         lambda c: login_budgets.give_back(c, "account", key, lim.account.capacity)),
        ("login", "auth_events.insert", True, True, lambda c: auth_events.insert(c, s.email, s.address, "success")),
        ("login", "sessions.insert_session", True, True,
         lambda c: session_repo.insert_session(c, new_session, s.user_id, timedelta(days=30), None)),
        ("login", "sessions.insert_refresh_token", True, True,
         lambda c: session_repo.insert_refresh_token(c, uuid.uuid4().bytes * 2, new_session)),
        # Every authenticated request, and the todos.
        ("request", "sessions.select_session_user", True, True,
         lambda c: session_repo.select_session_user(c, live)),
        ("request", "todos.select_page", True, True,
         lambda c: todos.select_page(c, live, limit=20, offset=0, completed=None)),
        ("request", "todos.select_page (deepest by offset, completed=false)", True, True,
         lambda c: todos.select_page(c, live, limit=20, offset=min(MAX_OFFSET, max(0, s.todo_count - 20)),
                                     completed=False)),
        ("request", "todos.select_page (after an id)", True, True,
         lambda c: todos.select_page(c, live, limit=20, after=s.todo_id, completed=None)),
        ("request", "todos.select_shown", True, True, lambda c: todos.select_shown(c, live, s.todo_id)),
        ("request", "todos.insert", True, True, lambda c: todos.insert(c, live, "a new todo", False)),
        ("request", "todos.update", True, True, lambda c: todos.update(c, live, s.todo_id, None, True)),
        ("request", "todos.delete", True, True, lambda c: todos.delete(c, live, s.todo_id)),
        # Refresh, introspection, revocation, logout.
        ("refresh", "sessions.select_refresh_owner", True, True,
         lambda c: session_repo.select_refresh_owner(c, s.token_hash, idle)),
        ("refresh", "sessions.lock_refresh", True, True,
         lambda c: session_repo.lock_refresh(c, s.token_hash, idle, grace)),
        ("refresh", "sessions.mark_used", True, True, lambda c: session_repo.mark_used(c, s.token_hash)),
        ("refresh", "sessions.touch", True, True, lambda c: session_repo.touch(c, s.session_id)),
        ("refresh", "sessions.session_of_refresh_token", True, True,
         lambda c: session_repo.session_of_refresh_token(c, s.token_hash)),
        ("refresh", "sessions.revoke", True, True, lambda c: session_repo.revoke(c, new_session, "logout")),
        ("refresh", "sessions.revoke_all", True, True,
         lambda c: session_repo.revoke_all(c, s.user_id, "logout_all", keep=s.session_id)),
        # A signup: its budget, then the insert whose unique keys find a taken or look-alike address.
        ("signup", "login_budgets.take", True, True,
         lambda c: login_budgets.take(c, "signup", s.address, lim.signup.capacity, lim.signup.rate)),
        ("signup", "users.insert", True, True,
         lambda c: users.insert(c, normalise(f"new.{uuid.uuid4().hex[:8]}@example.com"), "$2b$04$x", None, None, ["user"])),
        ("signup", "users.insert (taken)", True, True, lambda c: users.insert(c, normalise(s.email), "$2b$", None, None, ["user"])),
        # The account's own changes.
        ("account", "users.update_names", True, True, lambda c: users.update_names(c, s.user_id, {"last_name": "X"})),
        ("account", "users.update_password_hash", True, True,
         lambda c: users.update_password_hash(c, s.user_id, "$2b$04$y", "$2b$04$z")),
        # The migration's email backfill (at every migrate).
        ("backfill", "users.select_unkeyed", True, True, lambda c: users.select_unkeyed(c, 0, 500)),
        ("backfill", "users.select_holder", True, True,
         lambda c: users.select_holder(c, s.user_id, key, key.replace("m", "rn"))),
        ("backfill", "users.set_email_keys", True, True,
         lambda c: users.set_email_keys(c, s.user_id, key, key.replace("m", "rn"), None)),
        # The admin API (auth/admin_users.py): a page of users by id, one user locked for a change.
        ("admin", "users.select_page", True, True, lambda c: users.select_page(c, None, 0, 50)),
        ("admin", "users.select_page (by email prefix, after an id)", True, True,
         lambda c: users.select_page(c, s.email[:3], s.user_id, 50)),
        ("admin", "users.select_by_id", True, True, lambda c: users.select_by_id(c, s.user_id, lock=True)),
        # Service identities: a client registered by an operator, a user's API key.
        ("operator", "clients.insert", False, True,
         lambda c: clients.insert(c, client_id, f"planned {client_id}", ["todos"], "client_secret", None, None,
                                  300)),
        ("operator", "clients.insert_secret", False, True, lambda c: clients.insert_secret(c, client_id, secret_hash)),
        ("account", "api_keys.insert", True, True,
         lambda c: api_keys.insert(c, key_id, s.user_id, "planned", "ak_planned", key_hash, ["todos"],
                                   timedelta(days=30), 20)),
        ("account", "api_keys.select_of_user", True, True, lambda c: api_keys.select_of_user(c, s.user_id)),
        # The token endpoint (a client's secret; or its private_key_jwt client, then the
        # assertion's jti), a client's token on every request, an API key on every request,
        # and the loop that records the keys' last use in batches.
        ("token", "clients.select_with_secrets", True, True, lambda c: clients.select_with_secrets(c, client_id)),
        ("token", "clients.select", True, True, lambda c: clients.select(c, client_id)),
        ("token", "clients.insert_assertion", True, True,
         lambda c: clients.insert_assertion(c, client_id, uuid.uuid4().hex,
                                            datetime.now(UTC) + timedelta(minutes=5))),
        ("request", "clients.select_live_scopes", True, True, lambda c: clients.select_live_scopes(c, client_id)),
        ("request", "api_keys.select_usable", True, True, lambda c: api_keys.select_usable(c, key_hash)),
        ("flush", "api_keys.record_use", True, True,
         lambda c: api_keys.record_use(c, [key_id], [datetime.now(UTC)])),
        ("account", "api_keys.delete", True, True, lambda c: api_keys.delete(c, s.user_id, key_id)),
        # Operator commands (the admin API's clients, `authsvc clients`): rare, and allowed a
        # whole table.
        ("operator", "clients.select_all", False, True, lambda c: clients.select_all(c)),
        ("operator", "clients.retire_older_secrets", False, True,
         lambda c: clients.retire_older_secrets(c, client_id)),
        ("operator", "clients.set_disabled", False, True, lambda c: clients.set_disabled(c, client_id, True)),
        ("operator", "clients.delete", False, True, lambda c: clients.delete(c, client_id)),
        ("operator", "users.set_disabled", False, True, lambda c: users.set_disabled(c, s.user_id, False)),
        ("operator", "users.set_roles", False, True, lambda c: users.set_roles(c, s.user_id, ["user"])),
        ("operator", "auth_events.insert_admin", False, True,
         lambda c: auth_events.insert_admin(c, "operator", "user.roles", f"user:{s.user_id}", "127.0.0.1")),
        ("operator", "login_backoff.forget (account)", False, True, lambda c: login_backoff.forget(c, identifier=key)),
        ("operator", "login_backoff.forget (address)", False, True,
         lambda c: login_backoff.forget(c, address=s.address)),
        ("operator", "login_budgets.forget", False, True, lambda c: login_budgets.forget(c, "address", s.address)),
        ("account", "users.delete", True, True, lambda c: users.delete(c, s.user_id)),
    ]
    transaction = conn.transaction()
    await transaction.start()
    try:
        for path, function, hot, run, call in calls:
            try:
                await call(step(path, function, hot, run))
            except session_repo.SessionNotLive:  # the sample's session ended: planned all the same
                pass
    finally:
        await transaction.rollback()
    # The housekeeping loops' prunes, with the ages they pass: recorded, not run (each of
    # their batches commits, so they run outside a transaction).
    await session_repo.prune(step("prune", "sessions.prune", run=False), KEEP_ENDED)
    await clients.prune_assertions(step("prune", "clients.prune_assertions", run=False))
    for name, prune in prunes(lim).items():
        await prune(step("prune", f"{name}.prune", run=False))
    return rec.statements


async def plan(conn: asyncpg.Connection, statement: Statement, generic: bool, no_seqscan: bool = False) -> Any:
    """The JSON plan the statement gets when prepared, generic or custom."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL plan_cache_mode = {'force_generic_plan' if generic else 'force_custom_plan'}")
        if no_seqscan:
            await conn.execute("SET LOCAL enable_seqscan = off")
        await conn.execute(f"PREPARE authsvc_explained AS {statement.sql}")
        try:
            # EXECUTE takes no parameters: the arguments go in as literals of the types
            # PostgreSQL inferred, quoted by PostgreSQL.
            types = await conn.fetchval(
                "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = 'authsvc_explained'"
            )
            literals = [
                await conn.fetchval(f"SELECT quote_nullable($1::{t}) || '::{t}'", arg)
                for t, arg in zip(types, statement.args, strict=True)
            ]
            execute = "EXECUTE authsvc_explained" + (f"({', '.join(literals)})" if literals else "")
            text = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {execute}")
        finally:
            await conn.execute("DEALLOCATE authsvc_explained")
    return json.loads(text) if isinstance(text, str) else text


@dataclass(frozen=True)
class Scan:
    node: str  # "Index Scan", "Seq Scan", ...
    table: str
    index: str | None
    rows: float  # the planner's estimate

    def describe(self) -> str:
        return " ".join(part for part in (self.node, self.table, f"({self.index})" if self.index else "") if part)

    @property
    def whole_table(self) -> bool:
        return self.node in ("Seq Scan", "Sample Scan") and self.table in TABLES


def scans(plan_json: Any) -> list[Scan]:
    found: list[Scan] = []

    def walk(node: dict[str, Any]) -> None:
        if "Relation Name" in node or "Index Name" in node:  # a Bitmap Index Scan names only its index
            found.append(Scan(node["Node Type"], node.get("Relation Name", ""), node.get("Index Name"),
                              node.get("Plan Rows", 0)))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan_json[0]["Plan"])
    return found


async def report(url: str, email: str) -> list[dict[str, Any]]:
    """Each statement's custom and generic plans on this database, and its time here."""
    conn = await asyncpg.connect(url)
    try:
        statements = await exercise(conn, await sample(conn, email))
        out = []
        for st in statements:
            entry: dict[str, Any] = {"path": st.path, "function": st.function, "hot": st.hot, "ms": st.ms,
                                     "sql": " ".join(st.sql.split())}
            for kind in ("custom", "generic"):
                p = await plan(conn, st, generic=kind == "generic")
                entry[kind] = {"scans": [s.describe() for s in scans(p)],
                               "whole_table": [s.table for s in scans(p) if s.whole_table],
                               "cost": p[0]["Plan"]["Total Cost"], "plan": p}
            out.append(entry)
        return out
    finally:
        await conn.close()


def print_report(entries: list[dict[str, Any]]) -> None:
    print("\nplans on the large database (custom | generic; * reads a whole table)\n")
    for e in entries:
        flags = "*" if e["custom"]["whole_table"] or e["generic"]["whole_table"] else " "
        ms = "" if e["ms"] is None else f"{e['ms']:.2f} ms"
        custom, generic = "; ".join(e["custom"]["scans"]), "; ".join(e["generic"]["scans"])
        shown = custom if custom == generic else f"{custom} | {generic}"
        print(f"{flags} {e['path']:<8} {e['function']:<45} {ms:>10}  {shown}")
    print()
