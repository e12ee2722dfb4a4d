"""Password hashing: HMAC-SHA384 with a server-side pepper, base64, then bcrypt.

bcrypt reads at most 72 bytes (bcrypt 5 raises past that) and truncating would let two
passwords sharing their first 72 bytes both log in. The HMAC first maps any password to
64 base64 characters, so every byte counts, nothing is truncated, and a stolen database
is useless without the pepper (OWASP Password Storage Cheat Sheet, "pre-hashing").

bcrypt runs on a bounded thread pool, never on the event loop: it releases the GIL, so
the threads use every core. Past `workers + queue` waiting checks the caller gets Busy
(503) instead of an ever-growing queue.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import bcrypt

from .errors import Busy

T = TypeVar("T")


class PasswordHasher:
    def __init__(self, pepper: str, rounds: int, workers: int, queue: int) -> None:
        self._pepper = pepper.encode("utf-8")
        self.rounds = rounds
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bcrypt")
        self._workers = workers
        self._limit = workers + queue
        self._in_flight = 0
        self._dummy_hash: bytes | None = None
        self.checks = 0  # bcrypt verifications done; read by tests and the benchmarks

    def _prehash(self, password: str) -> bytes:
        digest = hmac.new(self._pepper, password.encode("utf-8"), hashlib.sha384).digest()
        return base64.b64encode(digest)

    def _hash_sync(self, password: str) -> bytes:
        return bcrypt.hashpw(self._prehash(password), bcrypt.gensalt(self.rounds))

    def _check_sync(self, password: str, stored: bytes) -> bool:
        return bcrypt.checkpw(self._prehash(password), stored)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._in_flight >= self._limit:
            raise Busy()
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._in_flight -= 1

    @property
    def running(self) -> int:
        """Jobs on a bcrypt thread now."""
        return min(self._in_flight, self._workers)

    @property
    def waiting(self) -> int:
        """Jobs queued for a thread (the bounded queue's depth)."""
        return max(0, self._in_flight - self._workers)

    async def start(self) -> None:
        # The stand-in for unknown users costs exactly what a real check costs.
        self._dummy_hash = await self._run(self._hash_sync, secrets.token_urlsafe(32))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def hash(self, password: str) -> str:
        return (await self._run(self._hash_sync, password)).decode("ascii")

    async def verify(self, password: str, stored: str | None) -> bool:
        """Check a password; with no stored hash, spend the same time and answer False."""
        assert self._dummy_hash is not None, "start() not awaited"
        target = stored.encode("ascii") if stored is not None else self._dummy_hash
        self.checks += 1
        ok = await self._run(self._check_sync, password, target)
        return ok and stored is not None

    def needs_rehash(self, stored: str) -> bool:
        """True when the hash was made at another cost than the configured one."""
        try:
            return int(stored.split("$")[2]) != self.rounds
        except (IndexError, ValueError):
            return True
