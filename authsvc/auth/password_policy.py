"""Which new passwords are refused (OWASP ASVS 5.0 6.2.4 common, 6.2.11 contextual, 6.2.12 breached).

Every new password (signup, password change, `authsvc users create`, any later reset) goes
through `PasswordPolicy.check` after its body passed the schema and before it is hashed, so
a refused one changes nothing. The rule:

- zxcvbn (its frequency lists: common passwords, words, names, keyboard walks, dates, with
  l33t, reversed and repeated forms) estimates how many guesses the password takes, the
  account's email, its local part and its names counting as the first words tried. Under
  MIN_GUESSES (zxcvbn score 0 or 1) it is refused: `password_contextual` when a match on those
  words is part of the weakness, else `password_too_common`, with zxcvbn's own reason.
- Only the first MAX_JUDGED characters are judged: zxcvbn's cost grows with the square of
  the length and more (about 50 s for 1,024 repeated characters). A password guessable as a
  whole is guessable in its start too, so nothing weak gets through; a strong one that
  starts guessably (32 times the same letter, then the real password) is refused. zxcvbn is
  pure Python: it runs on a thread of its own, off the event loop, with a bounded queue in
  front like bcrypt's.
- Optionally, a Pwned Passwords compatible range API (k-anonymity: only the first 5 hex
  digits of the password's SHA-1 are sent) refuses a password seen in breaches with
  `password_breached`. It fails open: when the service is down, slow or answers nonsense
  the password is accepted, and the outage is logged once, with one more line when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from zxcvbn import zxcvbn

from authsvc.errors import (
    Busy,
    PasswordBreached,
    PasswordContextual,
    PasswordRefused,
    PasswordTooCommon,
)

log = logging.getLogger(__name__)

MIN_GUESSES = 10**6  # zxcvbn's score 2 and up: "somewhat guessable" at worst
# Characters judged by zxcvbn. Measured at 32: 1-2 ms for a passphrase, 60 ms for the worst
# (l33t-heavy) input found; at 64 that worst was 0.3-0.4 s, more than a bcrypt hash.
MAX_JUDGED = 32
# zxcvbn() puts the user inputs in a module-level dictionary before matching: two calls at
# once, from two threads (two apps in one process), would match each other's words.
_ZXCVBN_LOCK = threading.Lock()



def user_inputs(email: str, first_name: str | None, last_name: str | None) -> list[str]:
    """The words an attacker who knows the account tries first."""
    local = email.rpartition("@")[0]
    pieces = [piece for piece in re.split(r"[\W_]+", local) if len(piece) >= 3]  # ada.lovelace
    words = [email, local, *pieces, first_name, last_name]
    return list(dict.fromkeys(word for word in words if word))


def judge(password: str, inputs: Sequence[str]) -> PasswordRefused | None:
    """The refusal for a guessable password, None for a good one. CPU-bound: see PasswordPolicy."""
    judged = password[:MAX_JUDGED]
    with _ZXCVBN_LOCK:
        result = zxcvbn(judged, user_inputs=list(inputs), max_length=MAX_JUDGED)
    if result["guesses"] >= MIN_GUESSES:
        return None
    feedback = result["feedback"]
    refusal = PasswordContextual if _uses_inputs(result["sequence"]) else PasswordTooCommon
    why = " ".join(part for part in (refusal.message, feedback["warning"], *feedback["suggestions"]) if part)
    return refusal(why)


def _uses_inputs(matches: Sequence[dict[str, Any]]) -> bool:
    return any(
        match.get("dictionary_name") == "user_inputs" or _uses_inputs(match.get("base_matches", ()))
        for match in matches
    )


class BreachCheck(Protocol):
    """Whether a password is in a breach corpus (authsvc/http/breached.py asks a range API)."""

    async def seen(self, password: str) -> bool: ...


class PasswordPolicy:
    """The rule above, with its thread and its optional breach checker; built once per app."""

    def __init__(self, queue: int, breached: BreachCheck | None = None) -> None:
        # One thread: zxcvbn holds the GIL anyway, and calls must not overlap (_ZXCVBN_LOCK).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="password-policy")
        self._limit = 1 + queue
        self._in_flight = 0
        self.breached = breached

    async def check(self, password: str, email: str, first_name: str | None, last_name: str | None) -> None:
        """Raise the PasswordRefused that applies; return for an acceptable password."""
        if self._in_flight >= self._limit:
            raise Busy()
        self._in_flight += 1
        try:
            inputs = user_inputs(email, first_name, last_name)
            refusal = await asyncio.get_running_loop().run_in_executor(self._executor, judge, password, inputs)
        finally:
            self._in_flight -= 1
        if refusal is not None:
            raise refusal
        # Only a password that passed the local rule is looked up: a common one never leaves.
        if self.breached is not None and await self.breached.seen(password):
            raise PasswordBreached()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
