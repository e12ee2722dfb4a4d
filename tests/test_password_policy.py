"""Refused new passwords: common ones, and ones made from the account.

The rule's own tests come first and need no server; then signup and password change over
real HTTP on the run's database.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from authsvc import password_policy
from authsvc.errors import Busy
from authsvc.password_policy import MAX_JUDGED, PasswordPolicy, judge, user_inputs

from helpers import PASSWORD, assert_error, bearer, login, signup

COMMON = ["password", "12345678", "qwertyuiop", "Password1"]
EMAIL = "grace.hopper@example.com"
FIRST, LAST = "Ermengarde", "Quillfeather"
# The account's own words: fine for anyone else (see test_own_words_are_refused_only_as_such).
OWN_WORDS = [EMAIL, "grace.hopper", FIRST, LAST, "Quillfeather1"]
INPUTS = user_inputs(EMAIL, FIRST, LAST)


# --- the rule ---


@pytest.mark.parametrize("password", COMMON)
def test_common_passwords_are_refused_saying_why(password: str) -> None:
    refusal = judge(password, INPUTS)
    assert refusal is not None and refusal.code == "password_too_common" and refusal.status == 422
    assert refusal.message.startswith("This password is too easy to guess.") and len(refusal.message) > 40


def test_the_email_of_the_account_is_refused_as_contextual() -> None:
    refusal = judge("someone@example.com", user_inputs("someone@example.com", None, None))
    assert refusal is not None and refusal.code == "password_contextual"


@pytest.mark.parametrize("password", OWN_WORDS)
def test_own_words_are_refused_only_as_such(password: str) -> None:
    refusal = judge(password, INPUTS)
    assert refusal is not None and refusal.code == "password_contextual", password
    assert "email address or name" in refusal.message
    assert judge(password, user_inputs("someone@example.com", "Ada", "Byron")) is None


def test_the_words_of_an_account() -> None:
    assert INPUTS == [EMAIL, "grace.hopper", "grace", "hopper", FIRST, LAST]
    assert user_inputs("a.b-cd_xyz@example.com", None, "") == ["a.b-cd_xyz@example.com", "a.b-cd_xyz", "xyz"]


@pytest.mark.parametrize(
    "password", [PASSWORD, "a brand new passphrase", "q8#Vz!2m", "éèêëàâäîïôöùûüçñøåæß", "open sesame 🔑🗝"]
)
def test_strong_passwords_pass(password: str) -> None:
    assert judge(password, INPUTS) is None


def test_long_passwords_are_judged_by_their_start_and_quickly() -> None:
    started = time.perf_counter()
    # zxcvbn alone takes close to a minute for this one.
    assert judge("a" * 1024, []).code == "password_too_common"
    assert judge(PASSWORD * 36 + "!", []) is None  # 1,009 characters
    # Weak start, strong end: refused, because only the start is judged. Its start alone is
    # as guessable, so the whole is no stronger than the judge says by much.
    assert judge("a" * MAX_JUDGED + PASSWORD, []) is not None
    assert time.perf_counter() - started < 2


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

