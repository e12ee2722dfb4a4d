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
import hashlib
import logging
import re
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from zxcvbn import zxcvbn

from authsvc.errors import (
    Busy,
    PasswordBreached,
    PasswordContextual,
    PasswordRefused,
    PasswordTooCommon,
)
from authsvc.settings import Settings

log = logging.getLogger(__name__)

MIN_GUESSES = 10**6  # zxcvbn's score 2 and up: "somewhat guessable" at worst
# Characters judged by zxcvbn. Measured at 32: 1-2 ms for a passphrase, 60 ms for the worst
# (l33t-heavy) input found; at 64 that worst was 0.3-0.4 s, more than a bcrypt hash.
MAX_JUDGED = 32
# zxcvbn() puts the user inputs in a module-level dictionary before matching: two calls at
# once, from two threads (two apps in one process), would match each other's words.
_ZXCVBN_LOCK = threading.Lock()

MAX_RANGE_BYTES = 1024 * 1024  # a real answer is ~40 KB (about 1,000 lines, with padding)
_RANGE_LINE = re.compile(r"([0-9A-Fa-f]{35}):([0-9]{1,12})")


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


class RangeAnswerError(Exception):
    """The range API answered, but not with SUFFIX:COUNT lines."""


def breach_count(answer: str, suffix: str) -> int:
    """How often the answer says the hash with this suffix was seen (padding lines count 0)."""
    lines = 0
    count = 0
    for line in answer.splitlines():
        line = line.strip()
        if not line:
            continue
        match = _RANGE_LINE.fullmatch(line)
        if match is None:
            raise RangeAnswerError("a line that is not SUFFIX:COUNT")
        lines += 1
        if match[1].upper() == suffix:
            count = int(match[2])
    if not lines:
        raise RangeAnswerError("an empty answer")  # every prefix has hundreds of suffixes
    return count


class BreachedPasswords:
    """A Pwned Passwords compatible range API (GET {url}/range/{first 5 hex digits of SHA-1})."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url
        self._down_since: float | None = None
        self._unchecked = 0

    async def seen(self, password: str) -> bool:
        """True when the password is in the breach corpus; False when not, or unknown."""
        digest = hashlib.sha1(password.encode("utf-8")).hexdigest().upper()
        prefix, suffix = digest[:5], digest[5:]  # only the prefix leaves this process
        try:
            count = breach_count(await self._range(prefix), suffix)
        except (aiohttp.ClientError, TimeoutError, RangeAnswerError) as exc:
            self._failed(exc)
            return False
        self._answered()
        return count > 0

    async def _range(self, prefix: str) -> str:
        async with self._session.get(f"{self._url}/range/{prefix}", allow_redirects=False) as resp:
            if resp.status != 200:
                raise RangeAnswerError(f"HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_RANGE_BYTES:
                    raise RangeAnswerError(f"an answer over {MAX_RANGE_BYTES} bytes")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise RangeAnswerError("an answer that is not text") from None

    def _failed(self, exc: BaseException) -> None:
        self._unchecked += 1
        if self._down_since is not None:
            return
        self._down_since = asyncio.get_running_loop().time()
        # Never str() of a client error: some quote the URL, which holds the hash prefix.
        if isinstance(exc, RangeAnswerError):
            reason = str(exc)
        elif isinstance(exc, TimeoutError):
            reason = "no answer in time"
        else:
            reason = type(exc).__name__
        log.warning(
            "breached-password check unavailable (%s): accepting new passwords without it until it answers", reason
        )

    def _answered(self) -> None:
        if self._down_since is None:
            return
        seconds = asyncio.get_running_loop().time() - self._down_since
        log.warning(
            "breached-password check available again after %.1f s (%d new password(s) accepted unchecked meanwhile)",
            seconds,
            self._unchecked,
        )
        self._down_since = None
        self._unchecked = 0


class PasswordPolicy:
    """The rule above, with its thread and its optional breach checker; built once per app."""

    def __init__(self, queue: int, breached: BreachedPasswords | None = None) -> None:
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


@asynccontextmanager
async def open_policy(settings: Settings) -> AsyncIterator[PasswordPolicy]:
    """The policy of these settings, with the breach checker's client session when configured."""
    session = None
    breached = None
    if settings.breached_passwords_url is not None:
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.breached_passwords_timeout),
            # Add-Padding: the answer's size does not tell an observer which prefix was asked.
            headers={"User-Agent": "authsvc", "Add-Padding": "true"},
        )
        breached = BreachedPasswords(session, settings.breached_passwords_url)
    policy = PasswordPolicy(settings.hash_queue, breached)
    try:
        yield policy
    finally:
        policy.close()
        if session is not None:
            await session.close()
