"""The password policy's rule on its own (zxcvbn, the account's words): no server, no database."""

from __future__ import annotations

import time

import pytest
from helpers import COMMON, FIRST, LAST, OWN_WORDS, PASSWORD
from helpers import POLICY_EMAIL as EMAIL

from authsvc.auth.password_policy import MAX_JUDGED, judge, user_inputs

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
