"""Logins under concurrency and attack: right credentials get in, nothing answers 500,
Retry-After tells the truth, signups have a budget of their own."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import math
import time
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from helpers import PASSWORD, Answer, attempt, login, signup, source

from authsvc.app import create_app
from authsvc.appkeys import HASHER, POOL, THROTTLE
from authsvc.auth.throttle import queue as pair_queue
from authsvc.db.repo import login_backoff

EMAIL = "service@example.com"
WRONG = "not the right password"
PROXY = ipaddress.ip_network("127.0.0.1/32")


class Clock:
    """The throttle's clock, moved together with the database's throttle rows: `travel(s)`
    is s seconds passing for memory and PostgreSQL alike."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    async def travel(self, db: asyncpg.Connection, seconds: float) -> None:
        shift = "make_interval(secs => $1)"
        await db.execute(
            f"""
            UPDATE login_backoff SET next_attempt_at = next_attempt_at - {shift},
                   held_until = held_until - {shift}, updated_at = updated_at - {shift}
            """,
            seconds,
        )
        await db.execute(
            f"UPDATE login_budgets SET updated_at = updated_at - {shift}, blocked_until = blocked_until - {shift}",
            seconds,
        )
        await db.execute(
            f"UPDATE login_known_addresses SET last_success_at = last_success_at - {shift}", seconds
        )
        self.offset += seconds


@pytest.fixture
def start(aiohttp_client: Any, settings: Any):
    """An app with some settings changed and, if given, the throttle's clock."""

    async def make(clock: Clock | None = None, **changes: Any) -> TestClient:
        return await aiohttp_client(create_app(settings.replace(**changes), clock=clock))

    return make


def deadlock_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    words = ("deadlock", "rolled back")
    return [r.getMessage() for r in caplog.records if any(w in r.getMessage().lower() for w in words)]


async def no_claim_left(db: asyncpg.Connection) -> None:
    """Every claim was given back: no pair is held or counts an attempt in flight."""
    held = await db.fetch("SELECT identifier, address, in_flight FROM login_backoff WHERE held_until > now()")
    assert held == [], held


# --- parallel logins on one account ---


async def test_8_parallel_right_logins_on_one_account_get_no_429_and_no_5xx(start, db, caplog):
    # The documented budgets; a service whose eight workers share one credential.
    client = await start(account_max_failures_per_hour=100, address_max_failures_per_minute=30)
    await signup(client, EMAIL)
    statuses: collections.Counter[int] = collections.Counter()

    async def worker() -> None:
        for _ in range(12):
            answer = await attempt(client.post, EMAIL, PASSWORD)
            statuses[answer.status] += 1

    # The first logins of all: the address is not known to the account yet.
    await asyncio.gather(*(worker() for _ in range(8)))
    assert statuses == {200: 96}, statuses
    await no_claim_left(db)
    assert deadlock_lines(caplog) == []


async def test_parallel_right_logins_use_every_hashing_thread(start, db):
    # A cost at which a check takes a few milliseconds: overlapping checks are seen.
    client = await start(bcrypt_rounds=8, hash_workers=2)
    hasher = client.app[HASHER]
    await signup(client, EMAIL)
    await login(client, EMAIL)  # the address is known to the account from now on
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, hasher.running)
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    answers = await asyncio.gather(*(attempt(client.post, EMAIL, PASSWORD) for _ in range(16)))
    done.set()
    await watcher
    assert [a.status for a in answers] == [200] * 16
    assert peak == 2


async def test_16_clients_right_and_wrong_on_one_account_never_5xx_nor_deadlock(start, db, caplog):
    caplog.set_level(logging.INFO, logger="authsvc")
    client = await start()
    throttle = client.app[THROTTLE]
    await signup(client, EMAIL)
    await login(client, EMAIL)
    answers: dict[str, collections.Counter[int]] = {"right": collections.Counter(), "wrong": collections.Counter()}
    until = time.monotonic() + 3.0

    async def worker(kind: str, password: str) -> None:
        for _ in range(2000):  # bounded; the clock ends it first
            if time.monotonic() > until:
                return
            answer = await attempt(client.post, EMAIL, password)
            answers[kind][answer.status] += 1

    await asyncio.gather(*(worker("right", PASSWORD) for _ in range(8)), *(worker("wrong", WRONG) for _ in range(8)))
    assert set(answers["right"]) <= {200, 429}, answers
    assert set(answers["wrong"]) <= {401, 429}, answers
    assert answers["right"][200] > 0 and answers["wrong"][401] > 0, answers
    assert deadlock_lines(caplog) == []
    # No claim was lost: nothing left held, nothing waiting to be given back, no attempt
    # recorded as cut short by a database error.
    await no_claim_left(db)
    assert not throttle.owes_claims
    outcomes = {r["outcome"] for r in await db.fetch("SELECT DISTINCT outcome FROM auth_events")}
    assert outcomes <= {"success", "failure", "throttled"}, outcomes
    # And the right password gets in once the wrong ones stop.
    await asyncio.sleep(0.02)  # the last backoff (at most 8 ms here) runs out
    assert (await attempt(client.post, EMAIL, PASSWORD)).status == 200


async def test_64_parallel_guesses_at_a_known_address_cost_at_most_the_hashing_threads(start, db):
    client = await start(login_backoff_base_ms=1000, login_backoff_max_ms=5000, max_sleeping=0, hash_workers=2)
    hasher = client.app[HASHER]
    await signup(client, EMAIL)
    await login(client, EMAIL)  # a clean pair at a known address admits parallel checks
    checks = hasher.checks
    answers = await asyncio.gather(*(attempt(client.post, EMAIL, WRONG) for _ in range(64)))
    counted = collections.Counter(a.status for a in answers)
    assert hasher.checks - checks <= 2
    assert counted == {401: hasher.checks - checks, 429: 64 - (hasher.checks - checks)}, counted
    # Then the schedule: the pair is closed, one guess per slot.
    failures = await db.fetchval("SELECT failures FROM login_backoff WHERE identifier = $1", EMAIL)
    assert failures == hasher.checks - checks
    assert (await attempt(client.post, EMAIL, WRONG)).status == 429
    assert hasher.checks - checks == failures


async def test_past_the_pairs_queue_a_login_is_refused_at_once_with_retry_after_1(start, monkeypatch):
    monkeypatch.setattr(pair_queue, "PAIR_QUEUE_MAX", 3)
    # A check of some tens of milliseconds: the twelve arrive while the first is checked.
    client = await start(bcrypt_rounds=10)
    await signup(client, EMAIL)  # never logged in from here: one attempt at a time
    answers = await asyncio.gather(*(attempt(client.post, EMAIL, PASSWORD) for _ in range(12)))
    counted = collections.Counter(a.status for a in answers)
    assert set(counted) == {200, 429}, counted
    assert counted[200] >= 4, counted  # the one in flight and the three queued behind it
    for refused in (a for a in answers if a.status == 429):
        assert refused.headers["Retry-After"] == "1", refused
    assert client.app[THROTTLE].queued == 0


# --- Retry-After tells the truth, for every budget ---


async def refused_then_admitted(clock: Clock, db: asyncpg.Connection, retry: Any) -> None:
    """`retry()` is refused with some Retry-After; a second less later it still is; exactly
    that long later it is admitted."""
    refused: Answer = await retry()
    assert refused.status == 429, refused
    wait = int(refused.headers["Retry-After"])
    if wait > 1:
        await clock.travel(db, wait - 1)
        assert (await retry()).status == 429
        await clock.travel(db, 1)
    else:
        await clock.travel(db, wait)
    admitted = await retry()
    assert admitted.status in (200, 201), admitted


async def test_retry_after_of_a_backoff_is_the_wait(start, db):
    clock = Clock()
    client = await start(clock, login_backoff_base_ms=5000, login_backoff_max_ms=60_000, max_sleeping=0)
    await signup(client, EMAIL)
    assert (await attempt(client.post, EMAIL, WRONG)).status == 401
    await refused_then_admitted(clock, db, lambda: attempt(client.post, EMAIL, PASSWORD))


async def test_retry_after_of_the_account_budget_is_the_wait(start, db):
    clock = Clock()
    client = await start(clock, account_max_failures_per_hour=10, max_sleeping=0, trusted_proxies=(PROXY,))
    await signup(client, EMAIL)
    for i in range(2):  # the burst, from elsewhere
        assert (await attempt(client.post, EMAIL, WRONG, forwarded_for=f"198.51.100.{i + 1}")).status == 401
    await refused_then_admitted(
        clock, db, lambda: attempt(client.post, EMAIL, PASSWORD, forwarded_for="198.51.100.9")
    )


async def test_retry_after_of_an_address_block_is_the_wait(start, db):
    clock = Clock()
    client = await start(
        clock, address_max_failures_per_minute=10, address_block_seconds=60, max_sleeping=0, trusted_proxies=(PROXY,)
    )
    await signup(client, EMAIL)
    for i in range(2):
        answer = await attempt(client.post, f"victim{i}@example.com", WRONG, forwarded_for="198.51.100.7")
        assert answer.status == 401
    await refused_then_admitted(
        clock, db, lambda: attempt(client.post, EMAIL, PASSWORD, forwarded_for="198.51.100.7")
    )


async def test_retry_after_of_the_signup_budget_is_the_wait(start, db):
    clock = Clock()
    client = await start(clock, signup_max_per_hour=5)  # a burst of one
    emails = iter(f"new{i}@example.com" for i in range(10))

    async def sign_up() -> Answer:
        resp = await client.post("/users", json={"email": next(emails), "password": PASSWORD})
        return Answer(resp.status, await resp.json(), resp.headers)

    assert (await sign_up()).status == 201
    await refused_then_admitted(clock, db, sign_up)


# --- the signup budget ---


async def test_signups_of_registered_emails_meet_the_budget(start, db):
    client = await start(signup_max_per_hour=30)  # a burst of 6
    hasher = client.app[HASHER]
    await signup(client, EMAIL)
    statuses = []
    for _ in range(50):
        resp = await client.post("/users", json={"email": EMAIL, "password": PASSWORD})
        statuses.append(resp.status)
        if resp.status == 429:
            body = await resp.json()
            assert body["error"] == "too_many_attempts", body
            assert 1 <= int(resp.headers["Retry-After"]) <= math.ceil(3600 / 24), resp.headers
    assert statuses == [409] * 5 + [429] * 45
    # Refused before any hashing: one hash per admitted signup (and the dummy at start).
    assert await db.fetchval("SELECT count(*) FROM users") == 1
    async with source(client, "127.0.0.2") as elsewhere:
        resp = await elsewhere("/users", json={"email": "other@example.com", "password": PASSWORD})
        assert resp.status == 201  # another address has a budget of its own
    assert hasher.checks == 0


async def test_a_signup_that_fails_validation_takes_nothing_from_the_budget(start, db):
    client = await start(signup_max_per_hour=5)
    for _ in range(3):
        resp = await client.post("/users", json={"email": "not an email", "password": PASSWORD})
        assert resp.status == 422
    assert await db.fetchval("SELECT count(*) FROM login_budgets WHERE scope = 'signup'") == 0
    await signup(client, EMAIL)


async def test_logins_go_ahead_of_queued_signups_on_the_hashing_threads(start):
    # Two threads; sixteen signups at once would fill both and queue: the login still finds
    # a thread at once, because new hashes may take all threads but one, and checks go first.
    client = await start(bcrypt_rounds=10, hash_workers=2, hash_queue=64)
    hasher = client.app[HASHER]
    await signup(client, EMAIL)

    async def sign_up(i: int) -> int:
        resp = await client.post("/users", json={"email": f"flood{i}@example.com", "password": PASSWORD})
        return resp.status

    flood = [asyncio.create_task(sign_up(i)) for i in range(16)]
    while hasher.waiting < 8:
        await asyncio.sleep(0.001)
    seen_hashing = hasher.running
    token = await login(client, EMAIL)
    waited = hasher.waiting
    assert token
    assert seen_hashing == 1, "new hashes took more than all threads but one"
    assert waited > 0, "the signups were all done before the login: nothing was queued ahead of it"
    assert set(await asyncio.gather(*flood)) == {201}


async def test_an_address_past_its_signup_budget_is_refused_from_memory(start):
    client = await start(signup_max_per_hour=5)  # a burst of one
    await signup(client, EMAIL)
    first = await client.post("/users", json={"email": "second@example.com", "password": PASSWORD})
    assert first.status == 429
    # The database is not asked again while the refusal is remembered: with the pool closed
    # to requests, the next ones still get the same 429 (not 503), before their body is read.
    client.app[POOL].ready = False
    try:
        for body in ({"email": "third@example.com", "password": PASSWORD}, {"not": "even valid"}):
            again = await client.post("/users", json=body)
            assert again.status == 429, await again.text()
            assert 0 < int(again.headers["Retry-After"]) <= int(first.headers["Retry-After"])
    finally:
        client.app[POOL].ready = True


async def test_a_waiters_look_before_claiming_follows_the_claims_own_rule(db):
    """held_full says "full" exactly when a claim with the same admission would be held."""
    hold, window = timedelta(seconds=15), timedelta(seconds=900)
    assert await login_backoff.claim(db, "look@example.com", "192.0.2.1", hold, window, 4) == 0
    # One in flight on a clean pair: full for a claim admitting one, not for one admitting four.
    assert await login_backoff.held_full(db, "look@example.com", "192.0.2.1", window, 1)
    assert not await login_backoff.held_full(db, "look@example.com", "192.0.2.1", window, 4)
    # With failures the pair admits one whatever is asked.
    await db.execute("UPDATE login_backoff SET failures = 1 WHERE identifier = 'look@example.com'")
    assert await login_backoff.held_full(db, "look@example.com", "192.0.2.1", window, 4)
    assert await login_backoff.claim(db, "look@example.com", "192.0.2.1", hold, window, 4) is None
    # In backoff it is not "full": the claim must be made, to be refused with the real wait.
    await db.execute("UPDATE login_backoff SET next_attempt_at = now() + interval '1 minute'")
    assert not await login_backoff.held_full(db, "look@example.com", "192.0.2.1", window, 4)
