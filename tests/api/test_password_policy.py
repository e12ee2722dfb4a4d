"""Refused new passwords: common ones, ones made from the account, and (optionally) breached ones.

The rule's own tests are in tests/unit/test_password_rule.py; here, signup and password change
over real HTTP on the run's database, then the breached-password check against a local range API.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from helpers import (
    COMMON,
    FIRST,
    LAST,
    OWN_WORDS,
    PASSWORD,
    assert_error,
    bearer,
    login,
    signup,
)
from helpers import POLICY_EMAIL as EMAIL

from authsvc.auth import password_policy
from authsvc.auth.password_policy import PasswordPolicy, user_inputs
from authsvc.errors import Busy
from authsvc.http.breached import RangeAnswerError, breach_count

INPUTS = user_inputs(EMAIL, FIRST, LAST)


# --- signup and password change over HTTP ---


async def user_rows(db: Any) -> list[Any]:
    return await db.fetch("SELECT email, password_hash FROM users ORDER BY id")


@pytest.mark.parametrize("password", COMMON)
async def test_signup_refuses_common_passwords_and_writes_nothing(client: TestClient, db: Any, password: str) -> None:
    resp = await client.post("/users", json={"email": EMAIL, "password": password})
    body = await assert_error(resp, 422, "password_too_common")
    assert "too easy to guess" in body["message"]
    assert await user_rows(db) == []


@pytest.mark.parametrize("password", OWN_WORDS)
async def test_signup_refuses_the_accounts_own_words(client: TestClient, db: Any, password: str) -> None:
    body = {"email": EMAIL, "password": password, "first_name": FIRST, "last_name": LAST}
    resp = await client.post("/users", json=body)
    await assert_error(resp, 422, "password_contextual")
    assert await user_rows(db) == []


async def test_signup_refuses_the_email_as_password(client: TestClient, db: Any) -> None:
    resp = await client.post("/users", json={"email": EMAIL, "password": EMAIL})
    await assert_error(resp, 422, "password_contextual")
    assert await user_rows(db) == []


async def test_the_schema_speaks_before_the_policy(client: TestClient) -> None:
    # Too short and common: the length is what is wrong first.
    resp = await client.post("/users", json={"email": EMAIL, "password": "1234567"})
    body = await assert_error(resp, 422, "validation_failed")
    assert "password" in body["details"]


@pytest.fixture
async def owner(client: TestClient, db: Any) -> tuple[dict[str, str], str]:
    """A signed-in account with names: its bearer header and its stored hash."""
    await signup(client, EMAIL, first_name=FIRST, last_name=LAST)
    token = await login(client, EMAIL)
    return bearer(token), (await user_rows(db))[0]["password_hash"]


@pytest.mark.parametrize(
    "new, code",
    [*((p, "password_too_common") for p in COMMON), *((p, "password_contextual") for p in OWN_WORDS)],
)
async def test_password_change_refuses_and_changes_nothing(
    client: TestClient, db: Any, owner: tuple[dict[str, str], str], new: str, code: str
) -> None:
    headers, before = owner
    resp = await client.post(
        "/users/me/password", json={"current_password": PASSWORD, "new_password": new}, headers=headers
    )
    await assert_error(resp, 422, code)
    assert (await user_rows(db))[0]["password_hash"] == before
    await login(client, EMAIL)  # the old password still works
    assert (await client.post("/auth", json={"email": EMAIL, "password": new})).status == 401
    assert (await client.get("/users/me", headers=headers)).status == 200  # and the session lives


async def test_a_wrong_current_password_is_403_whatever_the_new_one(
    client: TestClient, owner: tuple[dict[str, str], str]
) -> None:
    """The new password is judged only once the current one is proven."""
    body = {"current_password": "not the password", "new_password": "password"}
    resp = await client.post("/users/me/password", json=body, headers=owner[0])
    await assert_error(resp, 403, "invalid_current_password")


async def test_zxcvbn_runs_off_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[tuple[str, bool]] = []
    real = password_policy.zxcvbn

    def spy(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        threads.append((threading.current_thread().name, on_loop))
        return real(*args, **kwargs)

    monkeypatch.setattr(password_policy, "zxcvbn", spy)
    await signup(client, EMAIL)
    assert len(threads) == 1 and threads[0][0].startswith("password-policy") and not threads[0][1]


async def test_a_full_queue_answers_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(password_policy, "judge", lambda password, inputs: release.wait(10) and None)
    policy = PasswordPolicy(queue=1)
    try:
        first = [asyncio.create_task(policy.check(PASSWORD, EMAIL, None, None)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Busy):
            await policy.check(PASSWORD, EMAIL, None, None)
        release.set()
        await asyncio.gather(*first)
    finally:
        release.set()
        policy.close()


# --- the breached-password check ---


def sha1(password: str) -> str:
    return hashlib.sha1(password.encode("utf-8")).hexdigest().upper()


BREACHED = "a passphrase from a breach"  # strong to zxcvbn, listed by the range API below
PADDED = "a passphrase in the padding"  # listed with count 0: padding, not a hit


def test_range_answers_are_read_strictly() -> None:
    suffix = sha1(BREACHED)[5:]
    lines = f"{'0' * 35}:3\r\n{suffix.lower()}:42\r\n{'F' * 35}:0\r\n"
    assert breach_count(lines, suffix) == 42
    assert breach_count(lines, "0" * 34 + "1") == 0
    assert breach_count(lines, "F" * 35) == 0  # padding
    for garbage in ("", "\n\n", "<html>busy</html>", f"{suffix}:many", f"{suffix[:-1]}:1", f"{suffix}:1:2"):
        with pytest.raises(RangeAnswerError):
            breach_count(garbage, suffix)


class RangeApi:
    """A Pwned Passwords compatible range API on 127.0.0.1, noting every request it gets."""

    def __init__(self) -> None:
        self.url = ""
        self.mode = "answer"  # or "slow", "garbage", "error"
        self.requests: list[dict[str, Any]] = []
        self.released = asyncio.Event()  # a "slow" answer waits for it: past any timeout
        self.app = web.Application()
        self.app.router.add_get("/range/{prefix}", self.range)

    async def range(self, request: web.Request) -> web.Response:
        self.requests.append({
            "path": request.path_qs, "headers": dict(request.headers), "body": await request.read(),
        })
        if self.mode == "slow":
            await self.released.wait()
        if self.mode == "garbage":
            return web.Response(text="<html>Service temporarily busy</html>")
        if self.mode == "error":
            return web.Response(status=503, text="down for maintenance")
        prefix = request.match_info["prefix"]
        lines = [f"{prefix[:1]}{'0' * 34}:7", f"{prefix[:1]}{'1' * 34}:0"]
        for password, count in ((BREACHED, 1234), (PADDED, 0)):
            if sha1(password).startswith(prefix):
                lines.append(f"{sha1(password)[5:]}:{count}")
        return web.Response(text="\r\n".join(lines))


@pytest.fixture
async def range_api() -> Any:
    api = RangeApi()
    server = TestServer(api.app, host="127.0.0.1")
    await server.start_server()
    api.url = str(server.make_url("")).rstrip("/")
    yield api
    api.released.set()
    await server.close()


@pytest.fixture
async def checked(make_client: Callable[..., Awaitable[TestClient]], range_api: RangeApi) -> TestClient:
    return await make_client(breached_passwords_url=range_api.url, breached_passwords_timeout=0.3)


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "authsvc.http.breached"]


async def test_a_breached_password_is_refused_sending_only_the_hash_prefix(
    checked: TestClient, range_api: RangeApi, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    resp = await checked.post("/users", json={"email": EMAIL, "password": BREACHED})
    body = await assert_error(resp, 422, "password_breached")
    assert "breach" in body["message"]
    assert await user_rows(db) == []
    [sent] = range_api.requests
    assert sent["path"] == f"/range/{sha1(BREACHED)[:5]}" and sent["body"] == b""
    everything = repr(sent).upper()
    assert sha1(BREACHED)[5:] not in everything and BREACHED.upper() not in everything
    assert not any(sha1(BREACHED) in r.getMessage().upper() or BREACHED in r.getMessage() for r in caplog.records)


async def test_a_miss_and_a_padding_entry_are_accepted(checked: TestClient, range_api: RangeApi) -> None:
    await signup(checked, EMAIL)
    await signup(checked, "padded@example.com", password=PADDED)
    assert len(range_api.requests) == 2


async def test_a_common_password_is_never_looked_up(checked: TestClient, range_api: RangeApi) -> None:
    resp = await checked.post("/users", json={"email": EMAIL, "password": "password"})
    await assert_error(resp, 422, "password_too_common")
    assert range_api.requests == []


async def test_a_breached_new_password_is_refused_at_change(checked: TestClient, db: Any) -> None:
    await signup(checked, EMAIL)
    auth = bearer(await login(checked, EMAIL))
    before = (await user_rows(db))[0]["password_hash"]
    change = {"current_password": PASSWORD, "new_password": BREACHED}
    await assert_error(await checked.post("/users/me/password", json=change, headers=auth), 422, "password_breached")
    assert (await user_rows(db))[0]["password_hash"] == before
    await login(checked, EMAIL)


@pytest.mark.parametrize("mode", ["slow", "garbage", "error"])
async def test_an_unusable_answer_fails_open_with_one_line_per_outage(
    checked: TestClient, range_api: RangeApi, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level(logging.WARNING, "authsvc.http.breached")
    range_api.mode = mode
    started = time.perf_counter()
    for i in range(3):  # even the breached one: the check cannot tell
        await signup(checked, f"user{i}@example.com", password=BREACHED)
    assert time.perf_counter() - started < 2.5  # the timeout (0.3 s) each; "slow" never answers
    [down] = outage_lines(caplog)
    assert "unavailable" in down and "accepting new passwords without it" in down
    range_api.mode = "answer"
    refused = await checked.post("/users", json={"email": EMAIL, "password": BREACHED})
    await assert_error(refused, 422, "password_breached")
    await signup(checked, EMAIL)
    [_, back] = outage_lines(caplog)
    assert "available again" in back and "3 new password(s) accepted unchecked" in back


async def test_a_service_that_is_not_there_fails_open(
    make_client: Callable[..., Awaitable[TestClient]], range_api: RangeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "authsvc.http.breached")
    server = TestServer(web.Application(), host="127.0.0.1")
    await server.start_server()
    gone = str(server.make_url("")).rstrip("/")
    await server.close()  # nothing listens there now: connection refused
    client = await make_client(breached_passwords_url=gone, breached_passwords_timeout=0.3)
    await signup(client, EMAIL, password=BREACHED)
    await signup(client, "second@example.com", password=BREACHED)
    [line] = outage_lines(caplog)
    assert "(ClientConnectorError)" in line
