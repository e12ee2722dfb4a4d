"""The login backoff: exponential delay per (identifier, client address), kept in PostgreSQL.

A failed attempt closes the key for base * 2^(n-1) seconds (n consecutive failures, at
most the cap) and the 401 itself is delayed by that much with an awaited sleep. Attempts
that arrive while the key is closed, including parallel ones, are refused at once with
429 and never reach bcrypt. A success resets the key; a quiet window forgets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
from aiohttp import web

from .errors import TooManyAttempts
from .keys import POOL, SETTINGS, THROTTLE
from .repo import login_backoff

log = logging.getLogger(__name__)

# How long a claim stays closed if the process dies between claim and outcome.
CLAIM_HOLD = timedelta(seconds=15)
PRUNE_EVERY = 300.0


class Attempt:
    """One claimed login attempt; report exactly one outcome."""

    def __init__(self, throttle: LoginThrottle, identifier: str, address: str) -> None:
        self._throttle = throttle
        self._key = (identifier, address)

    async def succeeded(self) -> None:
        async with self._throttle.pool.acquire() as conn:
            await login_backoff.reset(conn, *self._key)

    async def failed(self) -> float:
        """Count the failure; return the delay in seconds to apply before answering."""
        t = self._throttle
        async with t.pool.acquire() as conn:
            delay = await login_backoff.record_failure(conn, *self._key, t.base, t.cap)
        return delay.total_seconds()

    async def abandon(self) -> None:
        async with self._throttle.pool.acquire() as conn:
            await login_backoff.release(conn, *self._key)


class LoginThrottle:
    def __init__(self, pool: asyncpg.Pool, base_ms: int, cap_ms: int, window_s: int) -> None:
        self.pool = pool
        self.base = timedelta(milliseconds=base_ms)
        self.cap = timedelta(milliseconds=cap_ms)
        self.window = timedelta(seconds=window_s)

    async def acquire(self, identifier: str, address: str) -> Attempt:
        """Claim an attempt or raise TooManyAttempts with the wait in seconds."""
        async with self.pool.acquire() as conn:
            failures = await login_backoff.claim(conn, identifier, address, CLAIM_HOLD, self.window)
            if failures is None:
                wait = await login_backoff.seconds_until_next(conn, identifier, address)
                raise TooManyAttempts(math.ceil(wait))
        return Attempt(self, identifier, address)

    async def prune(self) -> int:
        async with self.pool.acquire() as conn:
            return await login_backoff.prune(conn, self.window)


async def _prune_forever(throttle: LoginThrottle) -> None:
    while True:
        await asyncio.sleep(PRUNE_EVERY)
        try:
            await throttle.prune()
        except Exception:  # a database hiccup must not end the loop
            log.warning("pruning login counters failed", exc_info=True)


async def throttle_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    throttle = LoginThrottle(app[POOL], s.login_backoff_base_ms, s.login_backoff_max_ms, s.login_failure_window)
    app[THROTTLE] = throttle
    task = asyncio.create_task(_prune_forever(throttle))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
