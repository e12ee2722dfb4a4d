"""Brute-force protection for every login path, kept in PostgreSQL so all replicas share it.

Three budgets, all claimed in one transaction before any password is checked:

1. per (identifier, address): exponential backoff after consecutive failures
   (repo/login_backoff.py); a success resets it, a quiet window forgets it;
2. per identifier, from all addresses: at most `account_max_failures_per_hour` failures in
   any hour (a token bucket); addresses the account recently logged in from are exempt, so
   an attacker elsewhere cannot lock the owner out;
3. per address, across all identifiers: past `address_max_failures_per_minute` the address
   is refused for `address_block_seconds` (credential stuffing).

A claim that any budget refuses costs no bcrypt work and answers 429 with Retry-After.
Budgets 2 and 3 count a claimed attempt as a failure until it succeeds, so parallel
requests cannot overrun them; budget 1 admits one attempt per key at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from datetime import UTC, datetime, timedelta

import asyncpg
from aiohttp import web

from .config import Settings
from .db import CLIENT_MARGIN, UNAVAILABLE_ERRORS, Database, NotReady
from .errors import TooManyAttempts
from .keys import POOL, SETTINGS, THROTTLE
from .repo import auth_events, known_addresses, login_backoff, login_budgets

log = logging.getLogger(__name__)

# How long a claim stays closed if the process dies between claim and outcome.
CLAIM_HOLD = timedelta(seconds=15)
# A claim given back later than this (the database was away) leaves the hold alone: it has
# expired by itself, and the pair may be held by a newer attempt by then.
RELEASE_WITHIN = CLAIM_HOLD.total_seconds() - 2.0
PRUNE_EVERY = 300.0
# Refusals only a success or an operator can end early (an address block, a pair's backoff)
# are repeated from memory, so a flooding client costs a dictionary look-up per attempt
# instead of a transaction. Memory is trusted for at most `throttle_memory_ms`, then the
# database is asked again: that bounds how long `authsvc throttle reset` takes to reach every
# process (polling, not LISTEN/NOTIFY: no extra connection per worker to keep alive and
# reconnect, and it costs one transaction per refused pair or address per interval).
REMEMBERED_MAX = 100_000
# Seconds before a remembered refusal ends that the database is asked instead.
MEMORY_MARGIN = 0.05
EVENT_FLUSH_EVERY = 1.0
EVENT_BUFFER_MAX = 50_000


def normalise(identifier: str) -> str:
    """The budget key of a login identifier: the key its account is looked up by."""
    from .emails import lookup_key

    return lookup_key(identifier)


@dataclass(frozen=True)
class Bucket:
    scope: str
    capacity: float
    rate: float  # tokens a second


@dataclass(frozen=True)
class Limits:
    backoff_base: timedelta
    backoff_cap: timedelta
    failure_window: timedelta
    account: Bucket
    address: Bucket
    address_block: timedelta
    known_address_age: timedelta
    events_kept: timedelta
    memory: float  # seconds a refusal is repeated from memory before the database is asked again

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        # A bucket of capacity C refilled at R lets through at most C + R*T in any period T:
        # a fifth of the limit as burst and four fifths as refill keep every hour (minute)
        # at or under the configured number.
        per_hour = s.account_max_failures_per_hour
        per_minute = s.address_max_failures_per_minute
        return cls(
            backoff_base=timedelta(milliseconds=s.login_backoff_base_ms),
            backoff_cap=timedelta(milliseconds=s.login_backoff_max_ms),
            failure_window=timedelta(seconds=s.login_failure_window),
            account=Bucket("account", max(1.0, per_hour / 5), per_hour * 4 / 5 / 3600),
            address=Bucket("address", max(1.0, per_minute / 5), per_minute * 4 / 5 / 60),
            address_block=timedelta(seconds=s.address_block_seconds),
            known_address_age=timedelta(days=s.known_address_days),
            events_kept=timedelta(days=s.auth_events_days),
            memory=s.throttle_memory_ms / 1000,
        )


class _Refused(Exception):
    def __init__(self, budget: str) -> None:
        self.budget = budget


class Attempt:
    """One claimed login attempt; report exactly one outcome."""

    def __init__(self, throttle: LoginThrottle, identifier: str, key: str, address: str, account_counted: bool):
        self._throttle = throttle
        self._identifier = identifier  # as typed, for the event record
        self._key = key
        self._address = address
        self._account_counted = account_counted
        self._claimed_at = asyncio.get_running_loop().time()

    async def _give_back(self, conn: asyncpg.Connection) -> None:
        limits = self._throttle.limits
        await login_budgets.give_back(conn, "address", self._address, limits.address.capacity)
        if self._account_counted:
            await login_budgets.give_back(conn, "account", self._key, limits.account.capacity)

    async def succeeded(self) -> None:
        async with self._throttle.pool.acquire() as conn, conn.transaction():
            await login_backoff.reset(conn, self._key, self._address)
            await self._give_back(conn)
            await known_addresses.remember(conn, self._key, self._address)
            await auth_events.insert(conn, self._identifier, self._address, "success")

    async def failed(self) -> float:
        """Count the failure; return the delay in seconds to apply before answering."""
        limits = self._throttle.limits
        async with self._throttle.pool.acquire() as conn, conn.transaction():
            delay = await login_backoff.record_failure(
                conn, self._key, self._address, limits.backoff_base, limits.backoff_cap
            )
            await auth_events.insert(conn, self._identifier, self._address, "failure")
        return delay.total_seconds()

    async def abandon(self, outcome: str) -> None:
        """No verdict (hash queue full, database trouble): give back the claim and its tokens."""
        held = asyncio.get_running_loop().time() - self._claimed_at < RELEASE_WITHIN
        async with self._throttle.pool.acquire() as conn, conn.transaction():
            if held:
                await login_backoff.release(conn, self._key, self._address)
            await self._give_back(conn)
            await auth_events.insert(conn, self._identifier, self._address, outcome)


class RefusalEvents:
    """Refusals are recorded in batches, one row per (identifier, address, budget) and flush
    with the number of attempts: a flood must cost neither a write nor a row per request."""

    def __init__(self, pool: Database) -> None:
        self._pool = pool
        self._pending: dict[tuple[str, str, str], list[Any]] = {}  # -> [first seen, attempts]
        self.dropped = 0

    def add(self, identifier: str, address: str, reason: str) -> None:
        seen = self._pending.get((identifier, address, reason))
        if seen is not None:
            seen[1] += 1
        elif len(self._pending) < EVENT_BUFFER_MAX:
            self._pending[(identifier, address, reason)] = [datetime.now(UTC), 1]
        else:
            self.dropped += 1

    @property
    def unrecorded(self) -> int:
        return sum(n for _, n in self._pending.values()) + self.dropped

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if pending:
            rows = [(at, ident, addr, "throttled", reason, n) for (ident, addr, reason), (at, n) in pending.items()]
            try:
                async with self._pool.acquire() as conn:
                    await auth_events.insert_many(conn, rows)
            except UNAVAILABLE_ERRORS:
                self._put_back(pending)  # the next flush tries again
                raise
        if self.dropped:
            log.warning("%d refused login attempts were not recorded (buffer full)", self.dropped)
            self.dropped = 0

    def _put_back(self, pending: dict[tuple[str, str, str], list[Any]]) -> None:
        for key, (at, n) in pending.items():
            seen = self._pending.get(key)
            if seen is not None:
                seen[0], seen[1] = min(seen[0], at), seen[1] + n
            elif len(self._pending) < EVENT_BUFFER_MAX:
                self._pending[key] = [at, n]
            else:
                self.dropped += n


class LoginThrottle:
    def __init__(self, pool: Database, limits: Limits, max_sleeping: int) -> None:
        self.pool = pool
        self.limits = limits
        self.max_sleeping = max_sleeping
        self.sleeping = 0  # requests now waiting out their backoff in this process
        self.refusals = RefusalEvents(pool)
        self.unreturned: list[tuple[Attempt, str]] = []  # claims to give back when the database is back
        self._giving_back = asyncio.Lock()
        # ("address", a) or (key, a) -> (loop time until which memory is trusted, loop time it opens)
        self._closed: dict[tuple[str, ...], tuple[float, float]] = {}

    async def acquire(self, identifier: str, address: str) -> Attempt:
        """Claim an attempt under all three budgets, or raise TooManyAttempts."""
        key = normalise(identifier)
        self._refuse_from_memory(identifier, key, address)
        if self._giving_back.locked():
            # Another request or the background task is giving back what an outage left held,
            # and may be waiting out a silent database: do not queue behind it.
            raise NotReady("login claims from an outage are being given back")
        if self.unreturned:
            # First free what an outage left held; if the database still fails, so does this claim.
            await self.give_back_unreturned()
        attempt: Attempt | None = None
        try:
            async with self.pool.acquire() as conn:
                try:
                    async with conn.transaction():  # a refusal rolls back the tokens already taken
                        account_counted = await self._claim(conn, key, address)
                        attempt = Attempt(self, identifier, key, address, account_counted)
                except _Refused as refused:
                    wait = await self._after_refusal(conn, refused, key, address)
                    self.refusals.add(identifier, address, refused.budget)
                    raise TooManyAttempts(math.ceil(wait)) from None
        except UNAVAILABLE_ERRORS:
            if attempt is not None:
                # Lost at COMMIT (or after): the claim may stand, so it is given back later.
                self._give_back_later(attempt, "error")
            raise
        assert attempt is not None
        return attempt

    async def abandon(self, attempt: Attempt, outcome: str) -> None:
        """Give back a claim that got no verdict; if the database is away, as soon as it is back.

        A database error is not a failed guess: it must neither count against the account nor
        leave the pair held until the claim expires.
        """
        try:
            await attempt.abandon(outcome)
        except UNAVAILABLE_ERRORS:
            self._give_back_later(attempt, outcome)

    @property
    def owes_claims(self) -> bool:
        """Claims an outage left held are still to be given back (or being given back now)."""
        return bool(self.unreturned) or self._giving_back.locked()

    def _give_back_later(self, attempt: Attempt, outcome: str) -> None:
        if len(self.unreturned) < EVENT_BUFFER_MAX:
            self.unreturned.append((attempt, outcome))

    async def give_back_unreturned(self) -> None:
        async with self._giving_back:  # one at a time, and claims wait until it is done
            unreturned, self.unreturned = self.unreturned, []
            for i, (attempt, outcome) in enumerate(unreturned):
                try:
                    await attempt.abandon(outcome)
                except UNAVAILABLE_ERRORS:
                    self.unreturned[:0] = unreturned[i:]
                    raise
                except Exception:  # not the database being away: retrying would not help
                    log.warning("could not give back a login claim", exc_info=True)

    def _refuse_from_memory(self, identifier: str, key: str, address: str) -> None:
        now = asyncio.get_running_loop().time()
        for budget, closed in (("address", ("address", address)), ("backoff", (key, address))):
            remembered = self._closed.get(closed)
            if remembered is None:
                continue
            trusted_until, opens_at = remembered
            if trusted_until <= now:
                del self._closed[closed]
                continue
            self.refusals.add(identifier, address, budget)
            raise TooManyAttempts(math.ceil(opens_at - now))

    def _remember(self, closed: tuple[str, ...], seconds: float) -> None:
        # Never a hold (the attempt in flight may end it any moment) nor an account refusal
        # (it depends on the owner's known addresses, which only the database knows).
        # The wait was measured at the database a round trip ago: stop trusting memory a
        # little before the database opens, so memory never refuses what it would admit.
        trusted = min(seconds - MEMORY_MARGIN, self.limits.memory)
        if trusted <= 0:
            return
        now = asyncio.get_running_loop().time()
        if len(self._closed) >= REMEMBERED_MAX:
            self._closed = {k: v for k, v in self._closed.items() if v[0] > now}
            if len(self._closed) >= REMEMBERED_MAX:
                self._closed.clear()
        self._closed[closed] = (now + trusted, now + seconds)

    async def _claim(self, conn: asyncpg.Connection, key: str, address: str) -> bool:
        """Take from each budget in turn; return whether the account budget was charged."""
        lim = self.limits
        if not await login_budgets.take(conn, "address", address, lim.address.capacity, lim.address.rate):
            raise _Refused("address")
        if await login_backoff.claim(conn, key, address, CLAIM_HOLD, lim.failure_window) is None:
            raise _Refused("backoff")
        if await known_addresses.is_known(conn, key, address, lim.known_address_age):
            return False
        if not await login_budgets.take(conn, "account", key, lim.account.capacity, lim.account.rate):
            raise _Refused("account")
        return True

    async def _after_refusal(self, conn: asyncpg.Connection, refused: _Refused, key: str, address: str) -> float:
        """Apply the address block if that budget ran dry; return the seconds to wait."""
        lim = self.limits
        if refused.budget == "address":
            await login_budgets.block(conn, "address", address, lim.address_block)
            wait = await login_budgets.seconds_until_token(
                conn, "address", address, lim.address.capacity, lim.address.rate
            )
            self._remember(("address", address), wait)
            return wait
        if refused.budget == "account":
            return await login_budgets.seconds_until_token(
                conn, "account", key, lim.account.capacity, lim.account.rate
            )
        closed = await login_backoff.closed_for(conn, key, address)
        if not closed.backoff:
            return min(closed.seconds, 1.0)  # a hold ends when the check in flight does
        self._remember((key, address), closed.seconds)
        return closed.seconds

    async def delay(self, seconds: float) -> None:
        """Await the backoff before answering; past max_sleeping, answer at once.

        The key stays closed in the database either way, so skipping the sleep under load
        gives an attacker no extra guesses; it only stops sleepers from piling up sockets.
        """
        if seconds <= 0 or self.sleeping >= self.max_sleeping:
            return
        self.sleeping += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self.sleeping -= 1

    async def prune(self) -> None:
        lim = self.limits
        async with self.pool.acquire() as conn:
            await login_backoff.prune(conn, lim.failure_window)
            # A bucket untouched for a full refill period is full again: its row says nothing.
            await login_budgets.prune(conn, max(timedelta(hours=1), lim.address_block))
            await known_addresses.prune(conn, lim.known_address_age)
            await auth_events.prune(conn, lim.events_kept)


async def _every(seconds: float, job: Callable[[], Awaitable[object]], what: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except UNAVAILABLE_ERRORS:  # logged once by db.Database; the next round tries again
            pass
        except Exception:  # nothing must end the loop
            log.warning("%s failed", what, exc_info=True)


async def throttle_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    throttle = LoginThrottle(app[POOL], Limits.from_settings(settings), settings.max_sleeping)
    app[THROTTLE] = throttle
    tasks = [
        asyncio.create_task(_every(PRUNE_EVERY, throttle.prune, "pruning login records")),
        asyncio.create_task(_every(EVENT_FLUSH_EVERY, throttle.refusals.flush, "recording refused logins")),
        asyncio.create_task(_every(EVENT_FLUSH_EVERY, throttle.give_back_unreturned, "giving back login claims")),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Write what is pending, within a bound: a database that is gone must not hold up the exit.
    bound = settings.db_acquire_timeout + settings.db_statement_timeout + CLIENT_MARGIN
    with contextlib.suppress(Exception):
        async with asyncio.timeout(bound):
            await throttle.refusals.flush()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(bound):
            await throttle.give_back_unreturned()
    unrecorded = throttle.refusals.unrecorded
    if unrecorded or throttle.unreturned:
        log.warning(
            "stopping without the database: %d refused login attempt(s) not recorded, "
            "%d login claim(s) not given back (they expire by themselves)",
            unrecorded,
            len(throttle.unreturned),
        )
