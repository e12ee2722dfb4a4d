"""Password hashing: HMAC-SHA384 with a server-side pepper, base64, then bcrypt.

bcrypt reads at most 72 bytes (bcrypt 5 raises past that) and truncating would let two
passwords sharing their first 72 bytes both log in. The HMAC first maps any password to
64 base64 characters, so every byte counts, nothing is truncated, and a stolen database
is useless without the pepper (OWASP Password Storage Cheat Sheet, "pre-hashing").

bcrypt runs on a bounded thread pool, never on the event loop: it releases the GIL, so
the threads use every core. Past `workers + queue` waiting checks the caller gets Busy
(503) instead of an ever-growing queue.

Two lanes share the cores: checks (logins, which someone is waiting on) go first, and new
hashes (signups, password changes) may use all threads but one and run at a lower CPU
priority (nice), so a signup flood cannot queue the account owner's login behind it, nor
take the cores it needs; with the cores idle, new hashes run as fast as ever.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import bcrypt

from authsvc.errors import Busy

T = TypeVar("T")


CHECK = "check"
HASH = "hash"
# The nice value of the threads that make new hashes (0 is normal, 19 the lowest priority).
HASH_NICENESS = 10


def _lower_priority() -> None:
    """Run this thread at HASH_NICENESS: on Linux a thread has its own nice value."""
    with contextlib.suppress(AttributeError, OSError):  # no setpriority, or not allowed
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICENESS)


class PasswordHasher:
    def __init__(self, pepper: str, rounds: int, workers: int, queue: int) -> None:
        self._pepper = pepper.encode("utf-8")
        self.rounds = rounds
        # Threads each lane may occupy; checks may take them all.
        self._lane_max = {CHECK: workers, HASH: max(1, workers - 1)}
        # One pool a lane, of that size; _turn keeps the threads running at once to `workers`.
        self._executors = {
            CHECK: ThreadPoolExecutor(max_workers=self._lane_max[CHECK], thread_name_prefix="bcrypt"),
            HASH: ThreadPoolExecutor(
                max_workers=self._lane_max[HASH], thread_name_prefix="bcrypt-new", initializer=_lower_priority
            ),
        }
        self._workers = workers
        self._limit = workers + queue
        self._in_flight = 0
        self._lane_running = {CHECK: 0, HASH: 0}
        self._queued: dict[str, collections.deque[asyncio.Future[None]]] = {
            CHECK: collections.deque(),
            HASH: collections.deque(),
        }
        self._dummy_hash: bytes | None = None
        self.checks = 0  # bcrypt verifications done; read by tests and the benchmarks

    def _prehash(self, password: str) -> bytes:
        digest = hmac.new(self._pepper, password.encode("utf-8"), hashlib.sha384).digest()
        return base64.b64encode(digest)

    def _hash_sync(self, password: str) -> bytes:
        return bcrypt.hashpw(self._prehash(password), bcrypt.gensalt(self.rounds))

    def _check_sync(self, password: str, stored: bytes) -> bool:
        return bcrypt.checkpw(self._prehash(password), stored)

    def _may_start(self, lane: str) -> bool:
        return sum(self._lane_running.values()) < self._workers and self._lane_running[lane] < self._lane_max[lane]

    async def _turn(self, lane: str) -> None:
        """Wait until a thread is free for this lane (checks are served first)."""
        ahead = self._queued[CHECK] if lane == CHECK else (self._queued[CHECK] or self._queued[HASH])
        if not ahead and self._may_start(lane):
            self._lane_running[lane] += 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._queued[lane].append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._finished(lane)  # granted as it was cancelled: pass the thread on
            else:
                self._queued[lane].remove(turn)
            raise

    def _finished(self, lane: str) -> None:
        self._lane_running[lane] -= 1
        for next_lane in (CHECK, HASH):
            queue = self._queued[next_lane]
            while queue and self._may_start(next_lane):
                turn = queue.popleft()
                if not turn.done():
                    self._lane_running[next_lane] += 1
                    turn.set_result(None)

    async def _run(self, lane: str, fn: Callable[..., T], *args: object) -> T:
        if self._in_flight >= self._limit:
            raise Busy()
        self._in_flight += 1
        try:
            await self._turn(lane)
            try:
                return await asyncio.get_running_loop().run_in_executor(self._executors[lane], fn, *args)
            finally:
                self._finished(lane)
        finally:
            self._in_flight -= 1

    @property
    def running(self) -> int:
        """Jobs on a bcrypt thread now."""
        return sum(self._lane_running.values())

    @property
    def waiting(self) -> int:
        """Jobs queued for a thread (the bounded queue's depth)."""
        return self._in_flight - self.running

    async def start(self) -> None:
        # The stand-in for unknown users costs exactly what a real check costs.
        self._dummy_hash = await self._run(HASH, self._hash_sync, secrets.token_urlsafe(32))

    def close(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=True, cancel_futures=True)

    async def hash(self, password: str) -> str:
        return (await self._run(HASH, self._hash_sync, password)).decode("ascii")

    async def verify(self, password: str, stored: str | None) -> bool:
        """Check a password; with no stored hash, spend the same time and answer False."""
        assert self._dummy_hash is not None, "start() not awaited"
        target = stored.encode("ascii") if stored is not None else self._dummy_hash
        self.checks += 1
        ok = await self._run(CHECK, self._check_sync, password, target)
        return ok and stored is not None

    def needs_rehash(self, stored: str) -> bool:
        """True when the hash was made at another cost than the configured one."""
        try:
            return int(stored.split("$")[2]) != self.rounds
        except (IndexError, ValueError):
            return True
