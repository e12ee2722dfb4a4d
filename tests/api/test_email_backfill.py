"""Migration 0006 on a database that already holds users, colliding ones included."""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import PASSWORD, assert_error, bearer, signup

from authsvc.app import create_app
from authsvc.db import email_backfill, migrate

# (email as an earlier version stored it; what the backfill makes of it)
KEYED, DUPLICATE, LOOK_ALIKE = "keyed", "duplicate", "look-alike"
OLD_ROWS = [
    ("ann.h@example.com", KEYED),
    ("ａｎｎ.ｈ@example.com", DUPLICATE),  # of 1
    ("ann\u200b.h@example.com", DUPLICATE),  # of 1
    ("bill@example.com", KEYED),
    ("bi1l@example.com", LOOK_ALIKE),  # of 4
    ("bob@localhost", KEYED),  # no address by today's rules: keyed as it is, lower-cased
    ("Carol@Example.COM", KEYED),
    ("\ufdfa" * 14 + "@example.com", KEYED),  # NFKC: 252 characters of local part
    ("dave@bücher.de", KEYED),
    ("dave@xn--bcher-kva.de", DUPLICATE),  # of 9
]


# What a database the release before 0006 left has to apply.
SINCE_6 = [m.version for m in migrate.discover() if m.version >= 6]


async def database_at(databases: Any, tmp_path: Path, version: int) -> str:
    """A new database with the migrations up to `version` applied, as that release left it."""
    url = databases.create(migrated=False)
    directory = tmp_path / f"migrations-{version}"
    directory.mkdir()
    for m in migrate.discover():
        if m.version <= version:
            shutil.copy(m.path, directory / m.path.name)
    conn = await asyncpg.connect(url)
    try:
        await migrate.migrate(conn, directory)
    finally:
        await conn.close()
    return url


@pytest.fixture
async def password_hash(client: Any, db: asyncpg.Connection) -> str:
    """A hash of PASSWORD under the test settings' pepper, as any release stored it."""
    await signup(client, "hash-donor@example.com")
    return await db.fetchval("SELECT password_hash FROM users")


@pytest.fixture
async def old_database(databases: Any, tmp_path: Path, password_hash: str) -> str:
    url = await database_at(databases, tmp_path, 5)
    conn = await asyncpg.connect(url)
    try:
        for email, _ in OLD_ROWS:
            await conn.execute("INSERT INTO users (email, password_hash) VALUES ($1, $2)", email, password_hash)
        for user_id in (1, 2):
            await conn.execute(
                "INSERT INTO sessions (id, user_id, expires_at) VALUES ($1, $2, now() + interval '1 day')", uuid.uuid4(), user_id
            )
    finally:
        await conn.close()
    return url


async def run_migrate(url: str) -> list[migrate.Migration]:
    conn = await asyncpg.connect(url)
    try:
        return await migrate.migrate(conn)
    finally:
        await conn.close()


async def user_rows(url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(
            """
            SELECT u.id, u.email, u.email_key, u.email_skeleton, u.email_collides_with, u.disabled_at,
                   (SELECT array_agg(s.revoked_reason) FROM sessions s WHERE s.user_id = u.id) AS sessions
              FROM users u ORDER BY u.id
            """
        )
    finally:
        await conn.close()


async def test_existing_rows_are_keyed_oldest_first(old_database, monkeypatch, caplog):
    # Two rows to a batch, so that collisions cross batches.
    monkeypatch.setitem(migrate.STEPS, (6, "email_keys"), functools.partial(email_backfill.run, batch=2))
    with caplog.at_level(logging.INFO, logger="authsvc.db.email_backfill"):
        applied = await run_migrate(old_database)
    assert [m.version for m in applied] == SINCE_6  # 0006 and whatever came after it
    rows = await user_rows(old_database)
    assert [r["email"] for r in rows] == [email for email, _ in OLD_ROWS]  # as they were
    holders = {2: 1, 3: 1, 5: 4, 10: 9}
    for row, (email, fate) in zip(rows, OLD_ROWS, strict=True):
        state = (row["email_key"] is not None, row["email_skeleton"] is not None, row["email_collides_with"], row["disabled_at"] is not None)
        expected = {
            KEYED: (True, True, None, False),
            DUPLICATE: (False, False, holders.get(row["id"]), True),
            LOOK_ALIKE: (True, False, holders.get(row["id"]), False),
        }[fate]
        assert state == expected, (email, state)
    assert rows[0]["email_key"] == "ann.h@example.com" and rows[0]["email_skeleton"] == "ann.h@exarnple.corn"
    assert rows[4]["email_key"] == "bi1l@example.com"
    assert rows[5]["email_key"] == "bob@localhost"
    assert rows[6]["email_key"] == "carol@example.com"
    assert rows[8]["email_key"] == "dave@xn--bcher-kva.de"
    # The duplicate's sessions end; the holder's do not.
    assert rows[0]["sessions"] == [None] and rows[1]["sessions"] == ["email_collision"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "email keys: user 2 has the same key as user 1: disabled, no key",
        "email keys: user 3 has the same key as user 1: disabled, no key",
        "email keys: user 5 has the same skeleton as user 4: keeps its key, no skeleton",
        "email keys: user 10 has the same key as user 9: disabled, no key",
    ]
    # Run again (every start does): nothing changes.
    assert await run_migrate(old_database) == []
    assert await user_rows(old_database) == rows


async def test_after_the_backfill_the_service_knows_everyone(old_database, aiohttp_client, base_settings):
    await run_migrate(old_database)
    client = await aiohttp_client(create_app(base_settings.replace(database_url=old_database)))

    async def logs_in_as(identifier: str) -> int | None:
        resp = await client.post("/auth", json={"username": identifier, "password": PASSWORD})
        if resp.status != 200:
            await assert_error(resp, 401, "invalid_credentials")
            return None
        me = await client.get("/users/me", headers=bearer((await resp.json())["access_token"]))
        return (await me.json())["id"]

    assert await logs_in_as("ann.h@example.com") == 1
    assert await logs_in_as("ａｎｎ.ｈ@example.com") == 1  # the duplicate's spelling finds the holder
    assert await logs_in_as("bill@example.com") == 4
    assert await logs_in_as("bi1l@example.com") == 5  # a look-alike kept its login
    assert await logs_in_as("BOB@localhost") == 6
    assert await logs_in_as("carol@example.com") == 7
    assert await logs_in_as("\ufdfa" * 14 + "@example.com") == 8
    assert await logs_in_as("dave@xn--bcher-kva.de") == 9
    for taken in ("ａｎｎ.ｈ@example.com", "ann.h@examp1e.com", "bi11@example.com", "dave@BÜCHER.de"):
        resp = await client.post("/users", json={"email": taken, "password": PASSWORD})
        await assert_error(resp, 409, "email_taken")


async def test_rows_an_older_replica_writes_meanwhile(old_database, aiohttp_client, base_settings):
    """During a rolling deploy, replicas of the previous release still sign people up without
    keys: such rows are found as before until the next migrate keys them."""
    await run_migrate(old_database)
    client = await aiohttp_client(create_app(base_settings.replace(database_url=old_database)))
    conn = await asyncpg.connect(old_database)
    try:
        password_hash = await conn.fetchval("SELECT password_hash FROM users WHERE id = 1")
        for email in ("Eve@example.com", "ｅｖｅ@example.com"):  # what the old release let in
            await conn.execute(
                "INSERT INTO users (email, password_hash) VALUES ($1, $2) ON CONFLICT ((lower(email))) DO NOTHING",
                email,
                password_hash,
            )
        eve = await conn.fetchval("SELECT id FROM users WHERE email = 'Eve@example.com'")
    finally:
        await conn.close()
    resp = await client.post("/auth", json={"username": "eve@example.com", "password": PASSWORD})
    assert resp.status == 200
    await run_migrate(old_database)
    rows = {r["email"]: r for r in await user_rows(old_database)}
    assert rows["Eve@example.com"]["email_key"] == "eve@example.com"
    assert rows["ｅｖｅ@example.com"]["email_collides_with"] == eve
    assert rows["ｅｖｅ@example.com"]["disabled_at"] is not None


async def test_replicas_starting_together_key_the_rows_once(old_database):
    results = await asyncio.gather(*(run_migrate(old_database) for _ in range(3)))
    assert sorted(len(r) for r in results) == [0, 0, len(SINCE_6)]  # one applies them all, the others none
    rows = await user_rows(old_database)
    assert [r["email_collides_with"] for r in rows] == [None, 1, 1, None, 4, None, None, None, None, 9]


async def test_a_fresh_database_has_nothing_to_key(databases):
    url = databases.create()
    conn = await asyncpg.connect(url)
    try:
        assert await email_backfill.run(conn) == 0
    finally:
        await conn.close()


async def test_a_signup_that_wins_the_race_for_a_key_is_looked_at_again(databases, password_hash, monkeypatch):
    """A new signup can commit the key between the backfill's look-up and its update: the
    update's unique violation undoes that row only, and the row is looked at again."""
    url = databases.create()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO users (email, email_key, email_skeleton, password_hash) VALUES ($1, $1, $2, $3)",
            "ann.h@example.com",
            "ann.h@exarnple.corn",
            password_hash,
        )
        old = await conn.fetchval(
            "INSERT INTO users (email, password_hash) VALUES ('ａｎｎ.ｈ@example.com', $1) RETURNING id", password_hash
        )
        looked: list[int] = []
        select_holder = email_backfill.users.select_holder

        async def blind_once(*args: Any) -> Any:
            looked.append(1)
            return None if len(looked) == 1 else await select_holder(*args)

        monkeypatch.setattr(email_backfill.users, "select_holder", blind_once)
        assert await email_backfill.run(conn) == 1
        assert len(looked) == 2
        row = await conn.fetchrow("SELECT email_key, email_collides_with, disabled_at FROM users WHERE id = $1", old)
        assert (row["email_key"], row["email_collides_with"]) == (None, 1) and row["disabled_at"] is not None
    finally:
        await conn.close()
