"""The breached-password check over HTTP: a Pwned Passwords compatible range API.

k-anonymity: only the first 5 hex digits of the password's SHA-1 leave the process; the
answer lists the suffixes seen with that prefix. It fails open: when the service is down,
slow or answers nonsense the password is accepted, and the outage is logged once, with one
more line when it ends. `open_policy` builds the password policy of some settings with this
check when AUTHSVC_BREACHED_PASSWORDS_URL is set.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from authsvc.auth.password_policy import PasswordPolicy
from authsvc.settings import Settings

log = logging.getLogger(__name__)

MAX_RANGE_BYTES = 1024 * 1024  # a real answer is ~40 KB (about 1,000 lines, with padding)
_RANGE_LINE = re.compile(r"([0-9A-Fa-f]{35}):([0-9]{1,12})")


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
