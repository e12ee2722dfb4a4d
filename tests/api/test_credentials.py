"""Credentials: login backoff in PostgreSQL, bcrypt off the loop, bounded hashing, peppered hashes."""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import logging
import math
import statistics
import threading
import time
from datetime import timedelta
from typing import Any

import asyncpg
import bcrypt
import pytest
from aiohttp.test_utils import TestClient
from helpers import PASSWORD, login, signup

from authsvc.appkeys import HASHER

WRONG = "not the right password"
EMAIL = "owner@example.com"


@pytest.fixture
def settings(base_settings):
    # The growth/cap checks below read these exact values back from the database.
    return base_settings.replace(login_backoff_base_ms=1, login_backoff_max_ms=8, login_failure_window=900)


async def attempt(client: TestClient, identifier: str, password: str, path: str = "/auth") -> tuple[int, dict, Any]:
    """One login on /auth (JSON) or /auth/token (OAuth2 form); returns status, body, headers."""
    if path == "/auth":
        resp = await client.post("/auth", json={"username": identifier, "password": password})
    else:
        form = {"grant_type": "password", "username": identifier, "password": password}
        resp = await client.post("/auth/token", data=form)
    return resp.status, await resp.json(), resp.headers


async def backoff_row(db: asyncpg.Connection, identifier: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        """
        SELECT identifier, address, failures, next_attempt_at - updated_at AS closed_for
          FROM login_backoff WHERE identifier = $1
        """,
        identifier,
    )


async def fail_in_background(client: TestClient, db: asyncpg.Connection, identifier: str, path: str = "/auth"):
    """Start a wrong-password login; return its task once the failure is on record.

    Its answer is still being delayed then, so the key stays closed for the rest of the base delay.
    """
    task = asyncio.create_task(attempt(client, identifier, WRONG, path))
    deadline = time.monotonic() + 5
    while True:
        row = await backoff_row(db, identifier.lower())
        if row is not None and row["failures"] == 1:
            return task
        assert not task.done(), f"the login answered before its failure was recorded: {task.result()}"
        assert time.monotonic() < deadline, "the failure never reached the database"
        await asyncio.sleep(0.002)


def assert_too_many(status: int, body: dict, headers: Any, max_wait_s: float) -> None:
    assert status == 429, body
    assert body["error"] == "too_many_attempts"
    retry_after = int(headers["Retry-After"])
    assert 1 <= retry_after <= math.ceil(max_wait_s)


# --- backoff ---


async def test_failed_login_closes_the_key_and_a_login_meanwhile_gets_429_without_bcrypt(make_client, db):
    client = await make_client(login_backoff_base_ms=500, login_backoff_max_ms=500)
    hasher = client.app[HASHER]
    await signup(client, EMAIL)

    failing = await fail_in_background(client, db, EMAIL)
    checks = hasher.checks
    # Even the right password is refused while the key is closed, before any hashing.
    assert_too_many(*await attempt(client, EMAIL, PASSWORD), max_wait_s=0.5)
    assert hasher.checks == checks

    status, body, _ = await failing
    assert (status, body["error"]) == (401, "invalid_credentials")
    # The 401 came after the delay, so the key is open again.
    await login(client, EMAIL)


async def test_the_key_is_the_lower_cased_identifier_and_the_client_address(client, db):
    await signup(client, EMAIL)
    status, body, _ = await attempt(client, "Owner@Example.COM", WRONG)
    assert (status, body["error"]) == (401, "invalid_credentials")

    rows = await db.fetch("SELECT identifier, address, failures FROM login_backoff")
    assert [tuple(r) for r in rows] == [(EMAIL, client.server.host, 1)]


async def test_consecutive_failures_double_the_delay_up_to_the_cap(client, db):
    await signup(client, EMAIL)
    seen = []
    for _ in range(6):
        status, body, _ = await attempt(client, EMAIL, WRONG)
        assert (status, body["error"]) == (401, "invalid_credentials")  # never 429: each 401 waited out its delay
        row = await backoff_row(db, EMAIL)
        seen.append((row["failures"], row["closed_for"]))
    # base 1 ms * 2^(n-1), at most 8 ms
    assert seen == [(n, timedelta(milliseconds=ms)) for n, ms in enumerate([1, 2, 4, 8, 8, 8], start=1)]


async def test_a_success_deletes_the_counter(client, db):
    await signup(client, EMAIL)
    for _ in range(3):
        await attempt(client, EMAIL, WRONG)
    assert (await backoff_row(db, EMAIL))["failures"] == 3

    await login(client, EMAIL)
    assert await db.fetchval("SELECT count(*) FROM login_backoff") == 0

    # The next failure starts from the base delay again.
    await attempt(client, EMAIL, WRONG)
    row = await backoff_row(db, EMAIL)
    assert (row["failures"], row["closed_for"]) == (1, timedelta(milliseconds=1))


async def test_a_quiet_window_forgets_old_failures(client, db, settings):
    await signup(client, EMAIL)
    window = settings.login_failure_window

    async def pass_time(seconds: int) -> None:
        # Moving the row back in time stands in for waiting.
        await db.execute(
            """
            UPDATE login_backoff SET updated_at = updated_at - make_interval(secs => $1),
                                     next_attempt_at = next_attempt_at - make_interval(secs => $1)
            """,
            seconds,
        )

    for _ in range(2):
        await attempt(client, EMAIL, WRONG)
    await pass_time(window - 60)  # still inside the window: remembered
    await attempt(client, EMAIL, WRONG)
    row = await backoff_row(db, EMAIL)
    assert (row["failures"], row["closed_for"]) == (3, timedelta(milliseconds=4))

    await pass_time(window + 1)  # a whole quiet window: forgotten
    await attempt(client, EMAIL, WRONG)
    row = await backoff_row(db, EMAIL)
    assert (row["failures"], row["closed_for"]) == (1, timedelta(milliseconds=1))


async def test_the_401_itself_is_delayed_but_a_success_is_not(make_client):
    client = await make_client(login_backoff_base_ms=200, login_backoff_max_ms=200)
    await signup(client, EMAIL)

    started = time.perf_counter()
    await login(client, EMAIL)
    success = time.perf_counter() - started

    started = time.perf_counter()
    status, body, _ = await attempt(client, EMAIL, WRONG)
    failure = time.perf_counter() - started

    assert (status, body["error"]) == (401, "invalid_credentials")
    assert failure >= 0.195
    assert success < 0.15


async def test_parallel_attempts_cannot_walk_around_the_backoff(make_client, db):
    client = await make_client(login_backoff_base_ms=3000, login_backoff_max_ms=3000)
    hasher = client.app[HASHER]
    await signup(client, EMAIL)
    checks = hasher.checks

    results = await asyncio.gather(*(attempt(client, EMAIL, WRONG) for _ in range(64)))

    assert collections.Counter((status, body["error"]) for status, body, _ in results) == {
        (401, "invalid_credentials"): 1,
        (429, "too_many_attempts"): 63,
    }
    for status, _, headers in results:
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
    assert hasher.checks == checks + 1
    assert (await backoff_row(db, EMAIL))["failures"] == 1


async def test_unknown_accounts_are_throttled_exactly_like_real_ones(make_client, db):
    client = await make_client(login_backoff_base_ms=500, login_backoff_max_ms=500)
    await signup(client, EMAIL)

    async def story(identifier: str) -> list[tuple[int, dict]]:
        failing = await fail_in_background(client, db, identifier)
        status, body, headers = await attempt(client, identifier, PASSWORD)
        assert_too_many(status, body, headers, max_wait_s=0.5)
        first = await failing
        return [(first[0], first[1]), (status, body)]

    real = await story(EMAIL)
    unknown = await story("nobody@example.com")
    assert real == unknown
    assert [status for status, _ in real] == [401, 429]
    # The unknown identifier has a counter of its own, just like the real account.
    assert (await backoff_row(db, EMAIL))["failures"] == 1
    assert (await backoff_row(db, "nobody@example.com"))["failures"] == 1


async def test_identifiers_differing_only_in_case_share_one_budget(client, db):
    await signup(client, "alice@x.com")
    for identifier in ("Alice@X.com", "alice@x.com", "ALICE@X.COM"):
        status, body, _ = await attempt(client, identifier, WRONG)
        assert (status, body["error"]) == (401, "invalid_credentials")

    rows = await db.fetch("SELECT identifier, failures FROM login_backoff")
    assert [tuple(r) for r in rows] == [("alice@x.com", 3)]

    await login(client, "Alice@X.com")
    assert await db.fetchval("SELECT count(*) FROM login_backoff") == 0


async def test_identifiers_differing_only_in_case_are_closed_together(make_client, db):
    client = await make_client(login_backoff_base_ms=500, login_backoff_max_ms=500)
    await signup(client, "alice@x.com")

    failing = await fail_in_background(client, db, "Alice@X.com")
    assert_too_many(*await attempt(client, "alice@x.com", PASSWORD), max_wait_s=0.5)
    assert (await failing)[0] == 401


async def test_auth_and_token_endpoint_count_failures_together(client, db):
    await signup(client, EMAIL)
    status, body, _ = await attempt(client, EMAIL, WRONG, "/auth")
    assert (status, body["error"]) == (401, "invalid_credentials")
    status, body, _ = await attempt(client, EMAIL, WRONG, "/auth/token")
    assert (status, body["error"]) == (400, "invalid_grant")
    assert (await backoff_row(db, EMAIL))["failures"] == 2

    # A success on the token endpoint resets the counter for /auth too.
    status, body, _ = await attempt(client, EMAIL, PASSWORD, "/auth/token")
    assert status == 200, body
    assert await backoff_row(db, EMAIL) is None


@pytest.mark.parametrize(
    ("failing_on", "failure", "then_on"),
    [("/auth", (401, "invalid_credentials"), "/auth/token"), ("/auth/token", (400, "invalid_grant"), "/auth")],
)
async def test_a_failure_on_one_login_endpoint_closes_the_other(make_client, db, failing_on, failure, then_on):
    client = await make_client(login_backoff_base_ms=500, login_backoff_max_ms=500)
    await signup(client, EMAIL)

    failing = await fail_in_background(client, db, EMAIL, failing_on)
    assert_too_many(*await attempt(client, EMAIL, PASSWORD, then_on), max_wait_s=0.5)
    status, body, _ = await failing
    assert (status, body["error"]) == failure
    status, body, _ = await attempt(client, EMAIL, PASSWORD, then_on)
    assert status == 200, body


async def test_two_app_instances_on_one_database_share_the_counters(make_client, db):
    a = await make_client(login_backoff_base_ms=500, login_backoff_max_ms=500)
    b = await make_client(login_backoff_base_ms=500, login_backoff_max_ms=500)
    await signup(a, EMAIL)

    failing = await fail_in_background(a, db, EMAIL)
    checks = b.app[HASHER].checks
    assert_too_many(*await attempt(b, EMAIL, PASSWORD), max_wait_s=0.5)
    assert b.app[HASHER].checks == checks
    assert (await failing)[0] == 401

    # B's success resets the shared counter.
    await login(b, EMAIL)
    assert await backoff_row(db, EMAIL) is None


# --- timing ---


async def test_unknown_user_and_wrong_password_take_the_same_time(make_client):
    # A real bcrypt cost and no backoff, so the difference between the two paths would show.
    client = await make_client(bcrypt_rounds=10, login_backoff_base_ms=0, login_backoff_max_ms=0)
    hasher = client.app[HASHER]
    await signup(client, EMAIL)

    async def timed(identifier: str) -> float:
        started = time.perf_counter()
        status, body, _ = await attempt(client, identifier, WRONG)
        elapsed = time.perf_counter() - started
        assert (status, body["error"]) == (401, "invalid_credentials")
        return elapsed

    await timed(EMAIL)  # warm-up: connections, caches
    await timed("warm-up@example.com")

    costs = []
    for _ in range(5):
        started = time.perf_counter()
        await hasher.verify("x", None)
        costs.append(time.perf_counter() - started)
    bcrypt_cost = statistics.median(costs)

    unknown, wrong = [], []
    for i in range(25):
        # Interleaved, alternating which goes first, so drift hits both alike.
        if i % 2:
            unknown.append(await timed(f"nobody{i}@example.com"))
            wrong.append(await timed(EMAIL))
        else:
            wrong.append(await timed(EMAIL))
            unknown.append(await timed(f"nobody{i}@example.com"))

    unknown_median, wrong_median = statistics.median(unknown), statistics.median(wrong)
    assert abs(unknown_median - wrong_median) < bcrypt_cost / 2, (unknown_median, wrong_median, bcrypt_cost)
    # Both paths really run bcrypt.
    assert unknown_median >= bcrypt_cost / 2, (unknown_median, bcrypt_cost)
    assert wrong_median >= bcrypt_cost / 2, (wrong_median, bcrypt_cost)


# --- hashing ---


async def test_login_hashing_runs_on_the_bcrypt_threads(client, monkeypatch):
    await signup(client, EMAIL)
    threads = []
    real_checkpw = bcrypt.checkpw  # already wrapped by the conftest guard against the loop thread

    def spy(*args: Any) -> bool:
        threads.append(threading.current_thread().name)
        return real_checkpw(*args)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    await login(client, EMAIL)
    await attempt(client, EMAIL, WRONG)
    await attempt(client, "nobody@example.com", WRONG)

    assert len(threads) == 3
    assert all(name.startswith("bcrypt") for name in threads), threads
    assert threading.main_thread().name not in threads


async def test_a_full_hash_queue_answers_503_busy(make_client, db):
    client = await make_client(hash_workers=1, hash_queue=1, bcrypt_rounds=12)

    async def try_signup(i: int) -> tuple[int, dict, Any]:
        resp = await client.post("/users", json={"email": f"user{i}@example.com", "password": PASSWORD})
        return resp.status, await resp.json(), resp.headers

    results = await asyncio.gather(*(try_signup(i) for i in range(6)))
    statuses = collections.Counter(status for status, _, _ in results)
    assert set(statuses) <= {201, 503}, results  # never a 500
    assert statuses[503] >= 1 and statuses[201] >= 1, statuses
    for status, body, headers in results:
        if status == 503:
            assert body["error"] == "busy"
            assert int(headers["Retry-After"]) >= 1
    assert await db.fetchval("SELECT count(*) FROM users") == statuses[201]


async def test_the_stored_hash_is_bcrypt_over_the_peppered_hmac(client, db, settings):
    await signup(client, EMAIL)
    stored = (await db.fetchval("SELECT password_hash FROM users")).encode()

    assert stored.startswith(b"$2b$04$")
    # Off the loop thread: the conftest guard fails any bcrypt call on it.
    assert not await asyncio.to_thread(bcrypt.checkpw, PASSWORD.encode(), stored)
    peppered = base64.b64encode(
        hmac.new(settings.password_pepper.encode(), PASSWORD.encode(), hashlib.sha384).digest()
    )
    assert await asyncio.to_thread(bcrypt.checkpw, peppered, stored)


async def test_the_password_never_reaches_the_database_or_the_logs(client, db, caplog):
    caplog.set_level(logging.DEBUG)
    await signup(client, EMAIL)
    await login(client, EMAIL)
    await attempt(client, EMAIL, WRONG)
    await attempt(client, "nobody@example.com", WRONG, "/auth/token")

    for table in ("users", "login_backoff"):
        for row in await db.fetch(f"SELECT * FROM {table}"):  # noqa: S608 - fixed table names
            for value in row.values():
                assert PASSWORD not in str(value) and WRONG not in str(value), (table, value)
    assert caplog.records, "the requests were logged, so the check below means something"
    assert PASSWORD not in caplog.text and WRONG not in caplog.text
