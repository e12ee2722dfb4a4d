"""Brute-force protection: three budgets in PostgreSQL, shared by replicas, never blocking the loop or the owner."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import math
import time
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from helpers import PASSWORD, Answer, attempt, login, signup, source, wait_for

from authsvc.appkeys import HASHER, POOL, SETTINGS, THROTTLE
from authsvc.auth.throttle import MEMORY_MARGIN, Limits
from authsvc.db import repo
from authsvc.db.repo import auth_events

WRONG = "not the right password"
EMAIL = "owner@example.com"
BEHIND_LOCAL_PROXY = (ipaddress.ip_network("127.0.0.1/32"),)

@pytest.fixture
def settings(base_settings):
    # The documented defaults for the account and address budgets (conftest turns them off).
    return base_settings.replace(account_max_failures_per_hour=100, address_max_failures_per_minute=30)


def assert_refused(answer: Answer, max_wait_s: float) -> None:
    assert answer.status == 429, answer
    assert answer.body["error"] == "too_many_attempts"
    assert 1 <= int(answer.headers["Retry-After"]) <= math.ceil(max_wait_s), answer.headers


def assert_failed(answer: Answer, path: str = "/auth") -> None:
    expected = (401, "invalid_credentials") if path == "/auth" else (400, "invalid_grant")
    assert (answer.status, answer.body["error"]) == expected, answer


async def recorded(client: TestClient, db: asyncpg.Connection) -> list[tuple]:
    """The auth events so far, one per attempt, oldest first.

    Refusals are written in batches (flush them first), and repeated ones share a row that
    counts them in `attempts`: expand it.
    """
    await client.app[THROTTLE].refusals.flush()
    rows = await db.fetch(
        """
        SELECT identifier, address, outcome, reason
          FROM auth_events CROSS JOIN generate_series(1, attempts)
         ORDER BY at, id
        """
    )
    return [tuple(r) for r in rows]


async def last_event(client: TestClient, db: asyncpg.Connection) -> tuple:
    return (await recorded(client, db))[-1]


# --- backoff under parallel guessing ---


async def test_64_parallel_guesses_get_one_bcrypt_check_and_63_immediate_429s(make_client, db):
    client = await make_client(login_backoff_base_ms=1000, login_backoff_max_ms=5000)
    hasher = client.app[HASHER]
    await signup(client, EMAIL)
    checks = hasher.checks
    done: list[Answer] = []

    async def guess() -> None:
        done.append(await attempt(client.post, EMAIL, WRONG))

    started = time.monotonic()
    await asyncio.gather(*(guess() for _ in range(64)))
    # The schedule allows one guess now: exactly one bcrypt check, answered last (after its
    # one-second delay); the 63 others were refused before it, without hashing.
    assert hasher.checks == checks + 1
    assert [a.status for a in done] == [429] * 63 + [401]
    assert_failed(done[-1])
    for refused in done[:-1]:
        assert_refused(refused, max_wait_s=15)
    assert time.monotonic() - started >= 1.0
    assert (await db.fetchrow("SELECT failures FROM login_backoff WHERE identifier = $1", EMAIL))["failures"] == 1
    outcomes = collections.Counter(e[2:] for e in await recorded(client, db))
    assert outcomes == {("failure", None): 1, ("throttled", "backoff"): 63}


async def test_after_a_parallel_burst_the_next_slot_opens_on_schedule(make_client, db):
    # A real bcrypt cost: the parallel guesses arrive while the first one is being checked.
    client = await make_client(login_backoff_base_ms=300, login_backoff_max_ms=300, bcrypt_rounds=10)
    await signup(client, EMAIL)
    answers = await asyncio.gather(*(attempt(client.post, EMAIL, WRONG) for _ in range(64)))
    assert collections.Counter(a.status for a in answers) == {401: 1, 429: 63}
    # The 401 came after its 300 ms delay, so the key is open again in the database ...
    assert await db.fetchval("SELECT next_attempt_at <= now() FROM login_backoff WHERE identifier = $1", EMAIL)
    # ... and the owner's next try, with the right password, is admitted.
    answer = await attempt(client.post, EMAIL, PASSWORD)
    assert answer.status == 200, answer


# --- the account budget cannot be turned against the owner ---


async def test_the_owner_logs_in_from_a_known_address_while_an_attacker_drains_the_account(make_client, db):
    client = await make_client(account_max_failures_per_hour=10)  # a burst of 2
    hasher = client.app[HASHER]
    assert client.app[THROTTLE].limits.account.capacity == 2
    await signup(client, EMAIL)
    await login(client, EMAIL)  # the owner, from 127.0.0.1: now a known address

    async with source(client, "127.0.0.2") as attacker, source(client, "127.0.0.3") as stranger:
        answers = [await attempt(attacker, EMAIL, WRONG)]
        # The server really sees the second loopback address.
        assert await db.fetchval("SELECT address FROM login_backoff WHERE identifier = $1", EMAIL) == "127.0.0.2"
        while answers[-1].status == 401 and len(answers) < 10:
            answers.append(await attempt(attacker, EMAIL, WRONG))
        assert [a.status for a in answers] == [401, 401, 429]
        assert await last_event(client, db) == (EMAIL, "127.0.0.2", "throttled", "account")

        sent = 0
        stop = asyncio.Event()

        async def keep_attacking() -> None:
            nonlocal sent
            while not stop.is_set():
                assert_refused(await attempt(attacker, EMAIL, WRONG), max_wait_s=450)
                sent += 1

        attack = asyncio.create_task(keep_attacking())
        await wait_for(lambda: sent >= 5, 5, "the attack to get going")
        checks = hasher.checks

        for _ in range(3):
            await login(client, EMAIL)  # the owner's address is not held back
        # A brand-new address is held back, right password or not, and costs no bcrypt check.
        newcomer = await attempt(stranger, EMAIL, PASSWORD)
        assert_refused(newcomer, max_wait_s=3600 / (10 * 4 / 5))

        assert not attack.done(), "the attack was still running during the owner's logins"
        stop.set()
        await attack
    assert hasher.checks == checks + 3  # only the owner's logins were hashed

    by_address = collections.defaultdict(collections.Counter)
    for identifier, address, outcome, reason in await recorded(client, db):
        by_address[address][(identifier, outcome, reason)] += 1
    assert by_address == {
        "127.0.0.1": {(EMAIL, "success", None): 4},
        "127.0.0.2": {(EMAIL, "failure", None): 2, (EMAIL, "throttled", "account"): sent + 1},
        "127.0.0.3": {(EMAIL, "throttled", "account"): 1},
    }


async def test_the_account_budget_caps_failures_from_many_addresses_and_refills(make_client, db):
    client = await make_client(account_max_failures_per_hour=100, trusted_proxies=BEHIND_LOCAL_PROXY)
    hasher = client.app[HASHER]
    # A fifth of the hourly limit as burst, the rest as refill.
    limits = Limits.from_settings(client.app[SETTINGS])
    assert client.app[THROTTLE].limits == limits
    assert (limits.account.capacity, limits.account.rate) == (20, 100 * 4 / 5 / 3600)
    await signup(client, EMAIL)
    addresses = (f"198.51.100.{i}" for i in range(1, 255))

    async def flood(n: int) -> collections.Counter:
        answers = await asyncio.gather(
            *(attempt(client.post, EMAIL, WRONG, forwarded_for=next(addresses)) for _ in range(n))
        )
        for a in answers:
            if a.status == 429:
                assert_refused(a, max_wait_s=3600 / 80)
            else:
                assert_failed(a)
        return collections.Counter(a.status for a in answers)

    async def pass_time(seconds: int) -> None:
        await db.execute(
            "UPDATE login_budgets SET updated_at = updated_at - make_interval(secs => $1) WHERE scope = 'account'",
            seconds,
        )

    # Many attackers in parallel: exactly the burst gets through, whatever the parallelism.
    checks = hasher.checks
    assert await flood(50) == {401: 20, 429: 30}
    assert hasher.checks == checks + 20
    assert collections.Counter(e[2:] for e in await recorded(client, db))[("throttled", "account")] == 30

    # It slows, never locks: 50 s refill one token (80 an hour) ...
    await pass_time(50)
    assert await flood(10) == {401: 1, 429: 9}
    # ... and an hour later the whole burst is back, but not more.
    await pass_time(3600)
    assert await flood(30) == {401: 20, 429: 10}
    assert hasher.checks == checks + 41


# --- the address budget (credential stuffing) ---


async def test_an_address_trying_many_accounts_is_blocked_for_the_block_time(make_client, db):
    changes = {"address_max_failures_per_minute": 10, "address_block_seconds": 600}  # a burst of 2
    client = await make_client(**changes)
    other_instance = await make_client(**changes)
    assert client.app[THROTTLE].limits.address.capacity == 2
    await signup(client, EMAIL)
    checks = client.app[HASHER].checks, other_instance.app[HASHER].checks

    async def blocked_until() -> Any:
        return await db.fetchval(
            "SELECT blocked_until FROM login_budgets WHERE scope = 'address' AND key = '127.0.0.2'"
        )

    async with source(client, "127.0.0.2") as stuffer, source(other_instance, "127.0.0.2") as stuffer_elsewhere:
        answers = [await attempt(stuffer, f"victim{i}@example.com", WRONG) for i in range(3)]
        assert [a.status for a in answers] == [401, 401, 429]
        assert_refused(answers[-1], max_wait_s=600)
        assert int(answers[-1].headers["Retry-After"]) >= 590  # the block, not the refill
        assert await last_event(client, db) == ("victim2@example.com", "127.0.0.2", "throttled", "address")
        blocked_for = await db.fetchval(
            "SELECT blocked_until - now() FROM login_budgets WHERE scope = 'address' AND key = '127.0.0.2'"
        )
        assert timedelta(seconds=590) < blocked_for <= timedelta(seconds=600)

        # Retrying while blocked, on either instance, neither extends the block nor checks a
        # password, not even the right one.
        until = await blocked_until()
        for post in (stuffer, stuffer_elsewhere):
            for identifier, password in [("victim9@example.com", WRONG), (EMAIL, PASSWORD)]:
                answer = await attempt(post, identifier, password)
                assert_refused(answer, max_wait_s=600)
                assert int(answer.headers["Retry-After"]) >= 590
        assert await blocked_until() == until
        assert (client.app[HASHER].checks, other_instance.app[HASHER].checks) == (checks[0] + 2, checks[1])

        # Other addresses are unaffected.
        assert_failed(await attempt(client.post, "victim9@example.com", WRONG))
        await login(client, EMAIL)

        # Once the block is over (moved into the past here), the address may try again. A fresh
        # instance shows it: one that refused the address remembers the block for its whole length.
        await db.execute(
            """
            UPDATE login_budgets SET blocked_until = now() - interval '1 second',
                                     updated_at = updated_at - interval '600 seconds'
             WHERE scope = 'address' AND key = '127.0.0.2'
            """
        )
        async with source(await make_client(**changes), "127.0.0.2") as after_the_block:
            assert_failed(await attempt(after_the_block, "victim10@example.com", WRONG))


# --- replicas ---


async def test_two_instances_share_the_account_budget(make_client, db):
    a = await make_client(account_max_failures_per_hour=10)
    b = await make_client(account_max_failures_per_hour=10)
    await signup(a, EMAIL)
    for _ in range(2):
        assert_failed(await attempt(a.post, EMAIL, WRONG))

    # Another instance, another address: refused by the account budget A used up.
    async with source(b, "127.0.0.2") as post:
        assert_refused(await attempt(post, EMAIL, PASSWORD), max_wait_s=450)
    assert await last_event(b, db) == (EMAIL, "127.0.0.2", "throttled", "account")
    assert b.app[HASHER].checks == 0


async def test_two_instances_share_the_address_budget(make_client, db):
    a = await make_client(address_max_failures_per_minute=10)
    b = await make_client(address_max_failures_per_minute=10)
    async with source(a, "127.0.0.2") as on_a, source(b, "127.0.0.2") as on_b:
        for i in range(2):
            assert_failed(await attempt(on_a, f"victim{i}@example.com", WRONG))
        assert_refused(await attempt(on_b, "fresh@example.com", WRONG), max_wait_s=900)
    assert await last_event(b, db) == ("fresh@example.com", "127.0.0.2", "throttled", "address")
    assert b.app[HASHER].checks == 0


# --- bounded resources ---


async def test_healthz_answers_while_300_requests_sleep_in_backoff(make_client):
    # A backoff long enough that the first sleeper is still asleep when the last one lies down:
    # three batches take about 3 s here, more on a loaded machine.
    client = await make_client(
        login_backoff_base_ms=8000,
        login_backoff_max_ms=8000,
        hash_queue=1000,
        account_max_failures_per_hour=10_000,
        address_max_failures_per_minute=100_000,
    )
    throttle = client.app[THROTTLE]
    async with source(client) as post:
        # Distinct identifiers: each guess is checked, fails, then sleeps 4 s before answering.
        # In batches of 100, so that connecting stays within the server's listen backlog (128).
        sleepers: list[asyncio.Task] = []
        for batch in range(3):
            sleepers += [asyncio.create_task(attempt(post, f"user{batch}.{i}@example.com", WRONG)) for i in range(100)]
            await wait_for(lambda: throttle.sleeping == len(sleepers), 3, f"{len(sleepers)} sleepers")

        latencies = []
        for _ in range(50):
            started = time.perf_counter()
            resp = await client.get("/healthz")
            latencies.append(time.perf_counter() - started)
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}
        # All 50 answered while every sleeper was still asleep.
        assert throttle.sleeping == 300
        assert not any(task.done() for task in sleepers)
        assert max(latencies) < 1.0, max(latencies)

        for answer in await asyncio.gather(*sleepers):
            assert_failed(answer)
    assert throttle.sleeping == 0


async def test_past_max_sleeping_failures_answer_at_once_but_the_keys_stay_closed(make_client, db):
    client = await make_client(
        max_sleeping=5, login_backoff_base_ms=2000, login_backoff_max_ms=2000, address_max_failures_per_minute=100_000
    )
    throttle = client.app[THROTTLE]
    peak = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, throttle.sleeping)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    identifiers = [f"user{i}@example.com" for i in range(20)]
    tasks = {asyncio.create_task(attempt(client.post, i, WRONG)): i for i in identifiers}
    await wait_for(lambda: sum(t.done() for t in tasks) == 15, 1.5, "15 immediate answers")
    # 15 answered at once while exactly 5 were still asleep.
    assert throttle.sleeping == 5
    quick = [tasks[t] for t in tasks if t.done()]
    for t in tasks:
        if t.done():
            assert_failed(t.result())

    # Not sleeping gave them no extra guess: every key is closed in the database.
    rows = await db.fetch("SELECT identifier, failures, next_attempt_at > now() AS closed FROM login_backoff")
    assert sorted((r["identifier"], r["failures"], r["closed"]) for r in rows) == sorted(
        (i, 1, True) for i in identifiers
    )
    assert_refused(await attempt(client.post, quick[0], WRONG), max_wait_s=2)

    for t in tasks:
        assert_failed(await t)
    stop.set()
    await watcher
    assert peak == 5


async def test_idle_and_half_sent_connections_are_closed_after_the_idle_timeout(make_client):
    client = await make_client(idle_timeout=1)
    host, port = client.server.host, client.server.port

    async def closed_by_server(first_bytes: bytes) -> float:
        reader, writer = await asyncio.open_connection(host, port)
        started = time.monotonic()
        writer.write(first_bytes)
        await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(), 3)
        finally:
            writer.close()
        if b"\r\n\r\n" in first_bytes:
            # The headers were complete: the handler answers 408 before closing.
            assert answer.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in answer, answer
        else:
            assert answer == b""
        return time.monotonic() - started

    head = f"POST /auth HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    cases = {
        "idle": b"",
        "half a request line": b"POST /au",
        "half the headers": f"POST /auth HTTP/1.1\r\nHost: {host}\r\nContent-Ty".encode(),
        "half a body": head.encode() + b'{"username": "owner@',
    }
    results = await asyncio.gather(*(closed_by_server(data) for data in cases.values()), return_exceptions=True)
    not_closed = [name for name, r in zip(cases, results, strict=True) if isinstance(r, BaseException)]
    assert not not_closed, f"still open after 3 s: {not_closed}"
    for elapsed in results:
        assert 0.9 <= elapsed < 3


async def test_500_idle_connections_do_not_starve_healthz_or_a_real_login(make_client):
    client = await make_client(idle_timeout=1)
    await signup(client, EMAIL)
    host, port = client.server.host, client.server.port
    conns = []
    for _ in range(10):  # in batches, within the listen backlog
        conns += await asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(50)))
    for _, writer in conns:
        writer.write(b"GET /heal")

    started = time.perf_counter()
    resp = await client.get("/healthz")
    assert resp.status == 200
    await login(client, EMAIL)
    assert time.perf_counter() - started < 1.0

    # And the server lets go of every one of them.
    eofs = await asyncio.wait_for(asyncio.gather(*(reader.read() for reader, _ in conns)), 3)
    assert eofs == [b""] * 500
    for _, writer in conns:
        writer.close()


# --- client addresses ---


@pytest.mark.parametrize(
    ("trusted", "headers", "seen"),
    [
        ((), [("X-Forwarded-For", "203.0.113.9")], "127.0.0.1"),  # an untrusted peer: header ignored
        (("127.0.0.1/32",), [], "127.0.0.1"),
        (("127.0.0.1/32",), [("X-Forwarded-For", "1.1.1.1, 2.2.2.2")], "2.2.2.2"),
        (("127.0.0.1/32", "10.0.0.0/8"), [("X-Forwarded-For", "3.3.3.3, 10.1.2.3")], "3.3.3.3"),
        (("127.0.0.1/32",), [("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "2.2.2.2")], "2.2.2.2"),
        # A malformed hop ends the chain: the client cannot pick 1.1.1.1 by writing junk after it.
        (("127.0.0.1/32",), [("X-Forwarded-For", "1.1.1.1, not-an-address")], "127.0.0.1"),
        (("127.0.0.1/32",), [("X-Forwarded-For", "1.1.1.1, 2.2.2.2:8080")], "127.0.0.1"),
    ],
)
async def test_the_address_budgets_are_kept_for_the_right_hop(make_client, db, trusted, headers, seen):
    client = await make_client(trusted_proxies=tuple(ipaddress.ip_network(n) for n in trusted))
    resp = await client.post("/auth", json={"username": "nobody@example.com", "password": WRONG}, headers=headers)
    assert (resp.status, (await resp.json())["error"]) == (401, "invalid_credentials")
    assert await db.fetchval("SELECT address FROM login_backoff") == seen
    assert await last_event(client, db) == ("nobody@example.com", seen, "failure", None)


async def test_a_spoofed_forwarded_for_from_an_untrusted_peer_does_not_escape_the_address_budget(make_client, db):
    client = await make_client(address_max_failures_per_minute=10)  # a burst of 2
    answers = [
        await attempt(client.post, f"victim{i}@example.com", WRONG, forwarded_for=f"203.0.113.{i}") for i in range(3)
    ]
    assert [a.status for a in answers] == [401, 401, 429]
    assert await db.fetchval("SELECT array_agg(DISTINCT address) FROM auth_events") == ["127.0.0.1"]


# --- nothing to learn from the answers ---


def same_headers(answer: Answer) -> list[tuple[str, str]]:
    # Every answer has an X-Request-ID, different each time whatever the outcome: its value tells nothing.
    varying = {"date", "x-request-id"}
    return sorted((k.lower(), v if k.lower() not in varying else "") for k, v in answer.headers.items())


@pytest.mark.parametrize("path", ["/auth", "/auth/token"])
async def test_unknown_user_and_wrong_password_answer_identically(client, path):
    await signup(client, EMAIL)
    wrong = await attempt(client.post, EMAIL, WRONG, path=path)
    unknown = await attempt(client.post, "nobody@example.com", WRONG, path=path)
    assert_failed(wrong, path)
    assert (unknown.status, unknown.body) == (wrong.status, wrong.body)
    assert same_headers(unknown) == same_headers(wrong)
    if path == "/auth":  # a 401 always carries a challenge (RFC 9110 15.5.2)
        assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="authsvc"'


async def test_a_right_password_on_a_closed_key_gets_what_a_wrong_one_gets(make_client):
    # A long backoff that is not slept out (max_sleeping=0): the keys stay closed, the 401s come at once.
    client = await make_client(login_backoff_base_ms=60_000, login_backoff_max_ms=60_000, max_sleeping=0)
    hasher = client.app[HASHER]
    await signup(client, EMAIL)
    async with source(client, "127.0.0.2") as second, source(client, "127.0.0.3") as third:
        # Three closed keys: the account from two addresses, an unknown identifier from a third.
        closed = [(client.post, EMAIL), (second, EMAIL), (third, "nobody@example.com")]
        for post, identifier in closed:
            assert_failed(await attempt(post, identifier, WRONG))
        checks = hasher.checks

        # Twice each: the first refusal and a repeated one; the password makes no difference to either.
        for _ in range(2):
            right = await attempt(client.post, EMAIL, PASSWORD)
            wrong = await attempt(second, EMAIL, WRONG)
            unknown = await attempt(third, "nobody@example.com", PASSWORD)
            assert_refused(right, max_wait_s=60)
            for other in (wrong, unknown):
                assert (other.status, other.body) == (right.status, right.body)
                assert same_headers(other) == same_headers(right)
    assert hasher.checks == checks


async def test_a_repeated_refusal_still_tells_the_real_wait(make_client):
    client = await make_client(login_backoff_base_ms=60_000, login_backoff_max_ms=60_000, max_sleeping=0)
    assert_failed(await attempt(client.post, "nobody@example.com", WRONG))
    # The key is closed for a minute: every refusal in that minute says so.
    for _ in range(3):
        answer = await attempt(client.post, "nobody@example.com", WRONG)
        assert_refused(answer, max_wait_s=60)
        assert int(answer.headers["Retry-After"]) >= 58, answer.headers


# --- one budget for every login path ---


async def test_auth_and_token_share_the_account_budget(make_client, db):
    client = await make_client(account_max_failures_per_hour=10, trusted_proxies=BEHIND_LOCAL_PROXY)
    await signup(client, EMAIL)
    for i, path in enumerate(["/auth", "/auth/token"], start=1):
        assert_failed(await attempt(client.post, EMAIL, WRONG, path=path, forwarded_for=f"198.51.100.{i}"), path)
    # The budget both paths drew on is empty now, for both.
    for i, path in enumerate(["/auth", "/auth/token"], start=3):
        answer = await attempt(client.post, EMAIL, PASSWORD, path=path, forwarded_for=f"198.51.100.{i}")
        assert_refused(answer, max_wait_s=450)
        assert await last_event(client, db) == (EMAIL, f"198.51.100.{i}", "throttled", "account")


async def test_auth_and_token_share_the_address_budget(make_client, db):
    client = await make_client(address_max_failures_per_minute=10)
    assert_failed(await attempt(client.post, "a@example.com", WRONG, path="/auth"))
    assert_failed(await attempt(client.post, "b@example.com", WRONG, path="/auth/token"), "/auth/token")
    for identifier, path in [("c@example.com", "/auth/token"), ("d@example.com", "/auth")]:
        assert_refused(await attempt(client.post, identifier, WRONG, path=path), max_wait_s=900)
        assert await last_event(client, db) == (identifier, "127.0.0.1", "throttled", "address")


# --- the record of attempts ---


async def test_every_attempt_is_recorded_without_the_password(make_client, db):
    client = await make_client(
        login_backoff_base_ms=60_000,
        login_backoff_max_ms=60_000,
        max_sleeping=0,
        account_max_failures_per_hour=10,
        address_max_failures_per_minute=10,
        trusted_proxies=BEHIND_LOCAL_PROXY,
    )
    await signup(client, EMAIL)

    async def via(address: str, identifier: str, password: str) -> int:
        return (await attempt(client.post, identifier, password, forwarded_for=address)).status

    statuses = [
        await via("192.0.2.1", "Owner@Example.com", PASSWORD),  # success, identifier as typed
        await via("192.0.2.1", EMAIL, WRONG),  # failure, closes the key for a minute
        await via("192.0.2.1", EMAIL, PASSWORD),  # refused: backoff
        await via("192.0.2.2", EMAIL, WRONG),  # account: 1 of 2
        await via("192.0.2.3", EMAIL, WRONG),  # account: 2 of 2
        await via("192.0.2.4", EMAIL, WRONG),  # refused: account
        await via("192.0.2.9", "x@example.com", WRONG),  # address: 1 of 2
        await via("192.0.2.9", "y@example.com", WRONG),  # address: 2 of 2
        await via("192.0.2.9", "z@example.com", WRONG),  # refused: address
    ]
    assert statuses == [200, 401, 429, 401, 401, 429, 401, 401, 429]
    assert sorted(await recorded(client, db)) == sorted(
        [
            ("Owner@Example.com", "192.0.2.1", "success", None),
            (EMAIL, "192.0.2.1", "failure", None),
            (EMAIL, "192.0.2.1", "throttled", "backoff"),
            (EMAIL, "192.0.2.2", "failure", None),
            (EMAIL, "192.0.2.3", "failure", None),
            (EMAIL, "192.0.2.4", "throttled", "account"),
            ("x@example.com", "192.0.2.9", "failure", None),
            ("y@example.com", "192.0.2.9", "failure", None),
            ("z@example.com", "192.0.2.9", "throttled", "address"),
        ]
    )

    # A full bcrypt queue: 503 busy, recorded as such, and the claim is given back.
    await db.execute("TRUNCATE auth_events")
    busy_client = await make_client(
        hash_workers=1, hash_queue=1, bcrypt_rounds=11, address_max_failures_per_minute=1000
    )
    answers = await asyncio.gather(*(attempt(busy_client.post, f"b{i}@example.com", WRONG) for i in range(12)))
    busy = sorted(f"b{i}@example.com" for i, a in enumerate(answers) if a.status == 503)
    assert busy, [a.status for a in answers]
    for a in answers:
        if a.status == 503:
            assert a.body["error"] == "busy" and int(a.headers["Retry-After"]) >= 1
        else:
            assert_failed(a)
    events = await recorded(busy_client, db)
    assert len(events) == 12
    assert sorted(e[0] for e in events if e[2:] == ("busy", None)) == busy
    assert {e[1:] for e in events} <= {("127.0.0.1", "busy", None), ("127.0.0.1", "failure", None)}
    released = await db.fetch(
        "SELECT failures, next_attempt_at <= now() AS open FROM login_backoff WHERE identifier = ANY($1)", busy
    )
    assert [tuple(r) for r in released] == [(0, True)] * len(busy)

    # No password anywhere: not in a column of the event table, nor in any budget table.
    columns = await db.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'auth_events' ORDER BY column_name"
    )
    # (actor: who took an admin action, migration 0008)
    assert [c["column_name"] for c in columns] == [
        "actor", "address", "at", "attempts", "id", "identifier", "outcome", "reason"
    ]
    for table in ("auth_events", "login_backoff", "login_budgets", "login_known_addresses"):
        for row in await db.fetch(f"SELECT * FROM {table}"):  # noqa: S608 - fixed table names
            for value in row.values():
                assert PASSWORD not in str(value) and WRONG not in str(value), (table, value)


async def test_each_event_is_stamped_with_the_time_of_its_attempt(make_client, db):
    client = await make_client(login_backoff_base_ms=60_000, login_backoff_max_ms=60_000, max_sleeping=0)
    windows = []
    for password in (WRONG, WRONG, PASSWORD):  # a failure, then two refusals
        before = await db.fetchval("SELECT clock_timestamp()")
        await attempt(client.post, "nobody@example.com", password)
        windows.append((before, await db.fetchval("SELECT clock_timestamp()")))

    await client.app[THROTTLE].refusals.flush()
    rows = await db.fetch("SELECT outcome, at, attempts FROM auth_events ORDER BY at, id")
    # The two refusals share one row that counts them, stamped with the first one's time.
    assert [(r["outcome"], r["attempts"]) for r in rows] == [("failure", 1), ("throttled", 2)]
    for row, (before, after) in zip(rows, windows[:2], strict=True):
        assert before <= row["at"] <= after, (row["outcome"], before, row["at"], after)


async def test_a_remembered_refusal_ends_before_the_database_opens(make_client):
    """Memory repeats a refusal the database measured a round trip ago: it stops a margin
    early, so an attempt right at the opening is asked of the database, never refused."""
    throttle = (await make_client()).app[THROTTLE]
    throttle.memory.remember(("pair@example.com", "192.0.2.1"), 1.0)
    trusted_until, opens_at = throttle.memory.closed[("pair@example.com", "192.0.2.1")]
    assert opens_at - trusted_until == pytest.approx(MEMORY_MARGIN)  # loop times: floats
    throttle.memory.remember(("soon@example.com", "192.0.2.1"), MEMORY_MARGIN / 2)
    assert ("soon@example.com", "192.0.2.1") not in throttle.memory.closed


async def test_pruning_a_backlog_goes_in_batches_that_each_stay_short(make_client, db, monkeypatch):
    """However much a long pause left behind, each pruning statement deletes a batch."""
    monkeypatch.setattr(repo, "PRUNE_BATCH", 7)
    client = await make_client(auth_events_days=30)
    await db.execute(
        "INSERT INTO auth_events (at, identifier, address, outcome) "
        "SELECT now() - interval '40 days', 'old' || i, '192.0.2.1', 'failure' FROM generate_series(1, 50) AS i"
    )
    await db.execute(
        "INSERT INTO auth_events (at, identifier, address, outcome) VALUES (now(), 'new', '192.0.2.1', 'failure')"
    )
    deleted: list[int] = []

    class Counting:  # the connection, noting what each statement deleted
        def __init__(self, conn: asyncpg.Connection) -> None:
            self.conn = conn

        def is_in_transaction(self) -> bool:
            return self.conn.is_in_transaction()

        async def execute(self, sql: str, *args: Any) -> str:
            status = await self.conn.execute(sql, *args)
            deleted.append(int(status.split()[-1]))
            return status

    async with client.app[POOL].acquire() as conn:
        assert await auth_events.prune(Counting(conn), timedelta(days=30)) == 50
    assert deleted == [7] * 7 + [1]
    assert [r["identifier"] for r in await db.fetch("SELECT identifier FROM auth_events")] == ["new"]


async def test_events_older_than_the_setting_are_pruned(make_client, db):
    client = await make_client(auth_events_days=30)
    for i in range(3):
        assert_failed(await attempt(client.post, f"user{i}@example.com", WRONG))
    await db.execute("UPDATE auth_events SET at = now() - interval '31 days' WHERE identifier = 'user0@example.com'")
    await db.execute("UPDATE auth_events SET at = now() - interval '29 days' WHERE identifier = 'user1@example.com'")

    await client.app[THROTTLE].prune()
    kept = await db.fetch("SELECT identifier FROM auth_events ORDER BY id")
    assert [r["identifier"] for r in kept] == ["user1@example.com", "user2@example.com"]
