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
requests cannot overrun them.

Concurrency on one pair: a pair with failures, or whose address the account has not logged
in from, admits one attempt at a time; a clean pair at a known address admits as many as
the hashing pool has threads (a service whose workers share one credential). Requests past
that wait in this process for their turn (a bounded queue per pair) instead of being refused:
a right password is never refused for being concurrent, and a wrong one closes the pair for
everyone queued behind it. docs/throttle.md explains the choice.

Lock order, in every transaction here: the address budget row, the pair's backoff row, the
pair's known-address row, the account budget row. Nothing else takes two of them, so claims
and outcomes cannot deadlock; what PostgreSQL still rolls back is retried (db.in_transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from authsvc import background
from authsvc.db.pool import (
    CLIENT_MARGIN,
    CONTENTION_ERRORS,
    UNAVAILABLE_ERRORS,
    Contended,
    Database,
    NotReady,
    in_transaction,
)
from authsvc.auth.throttle.events import EVENT_BUFFER_MAX, EVENT_FLUSH_EVERY, RefusalEvents
from authsvc.auth.throttle.policy import Bucket, Limits, normalise
from authsvc.auth.throttle.signups import SignupBudget
from authsvc.db.repo import auth_events, known_addresses, login_backoff, login_budgets
from authsvc.errors import TooManyAttempts
from authsvc.settings import Settings

__all__ = ["Bucket", "Limits", "LoginThrottle", "RefusalEvents", "SignupBudget", "normalise", "running"]

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
# Requests of one pair waiting for their turn in this process, and how long one may wait:
# past either it is refused (429, Retry-After 1) rather than queued without end.
PAIR_QUEUE_MAX = 64
PAIR_QUEUE_WAIT = 10.0
QUEUED_MAX = 10_000  # waiting for a turn in this process, all pairs together
# While another replica holds the pair, how often to look again.
HELD_POLL = 0.05
# What the give-back path treats as "try again later" rather than a lost claim.
RETRY_LATER = (*UNAVAILABLE_ERRORS, *CONTENTION_ERRORS, Contended)


class _Refused(Exception):
    def __init__(self, budget: str) -> None:
        self.budget = budget


class _Held(Exception):
    """The pair has as many attempts in flight as it admits (on another replica, or ours)."""


@dataclass(frozen=True)
class _Claim:
    account_counted: bool
    parallel: int  # attempts the pair admits at once after this claim


class _Pair:
    """This process's attempts on one (identifier, address): in flight, allowed, queued."""

    __slots__ = ("active", "limit", "waiting", "turn")

    def __init__(self) -> None:
        self.active = 0
        self.limit = 1  # until a claim shows the pair is clean and known
        self.waiting = 0
        self.turn = asyncio.Event()  # set (and replaced) whenever an attempt ends

    def release(self) -> None:
        """One attempt fewer in flight: wake those waiting for a turn."""
        self.active -= 1
        self.turn.set()
        self.turn = asyncio.Event()


class Attempt:
    """One claimed login attempt; report exactly one outcome."""

    def __init__(self, throttle: LoginThrottle, identifier: str, key: str, address: str, account_counted: bool):
        self._throttle = throttle
        self._identifier = identifier  # as typed, for the event record
        self._key = key
        self._address = address
        self._account_counted = account_counted
        self._claimed_at = throttle.clock()
        self._turn_held = True

    def end_turn(self) -> None:
        """The next queued attempt of this pair in this process may go (once)."""
        if self._turn_held:
            self._turn_held = False
            self._throttle.end_turn(self._key, self._address)

    # Each outcome takes its rows in the lock order of the module docstring.

    async def succeeded(self) -> None:
        limits = self._throttle.limits

        async def work(conn: asyncpg.Connection) -> None:
            await login_budgets.give_back(conn, "address", self._address, limits.address.capacity)
            await login_backoff.reset(conn, self._key, self._address)
            await known_addresses.remember(conn, self._key, self._address)
            if self._account_counted:
                await login_budgets.give_back(conn, "account", self._key, limits.account.capacity)
            await auth_events.insert(conn, self._identifier, self._address, "success")

        async with self._throttle.pool.acquire() as conn:
            await in_transaction(conn, work)
        self.end_turn()

    async def failed(self) -> float:
        """Count the failure; return the delay in seconds to apply before answering."""
        limits = self._throttle.limits

        async def work(conn: asyncpg.Connection) -> timedelta:
            delay = await login_backoff.record_failure(
                conn, self._key, self._address, limits.backoff_base, limits.backoff_cap
            )
            await auth_events.insert(conn, self._identifier, self._address, "failure")
            return delay

        async with self._throttle.pool.acquire() as conn:
            delay = await in_transaction(conn, work)
        self.end_turn()
        return delay.total_seconds()

    async def abandon(self, outcome: str) -> None:
        """No verdict (hash queue full, database trouble): give back the claim and its tokens."""
        limits = self._throttle.limits
        held = self._throttle.clock() - self._claimed_at < RELEASE_WITHIN

        async def work(conn: asyncpg.Connection) -> None:
            await login_budgets.give_back(conn, "address", self._address, limits.address.capacity)
            if held:
                await login_backoff.release(conn, self._key, self._address)
            if self._account_counted:
                await login_budgets.give_back(conn, "account", self._key, limits.account.capacity)
            await auth_events.insert(conn, self._identifier, self._address, outcome)

        async with self._throttle.pool.acquire() as conn:
            await in_transaction(conn, work)
        self.end_turn()


class LoginThrottle:
    def __init__(
        self,
        pool: Database,
        limits: Limits,
        max_sleeping: int,
        parallel: int,
        processes: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.limits = limits
        self.max_sleeping = max_sleeping
        # Attempts a clean pair at a known address may have in flight: in this process (its
        # bcrypt threads), and in all (the threads of every worker of this serve). The second
        # is what the database enforces: each worker can keep its own threads busy, and none
        # waits on another's for its turn.
        self.parallel = parallel
        self.shared_parallel = parallel * processes
        self.clock = clock  # seconds; injected by tests, which move the database's rows to match
        self.sleeping = 0  # requests now waiting out their backoff in this process
        self.queued = 0  # requests now waiting for their pair's turn in this process
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self.refusals = RefusalEvents(pool)
        self.unreturned: list[tuple[Attempt, str]] = []  # claims to give back when the database is back
        self._giving_back = asyncio.Lock()
        # ("address", a) or (key, a) -> (loop time until which memory is trusted, loop time it opens)
        self._closed: dict[tuple[str, ...], tuple[float, float]] = {}

    async def acquire(self, identifier: str, address: str) -> Attempt:
        """Claim an attempt under all three budgets, waiting for the pair's turn if it has
        as many attempts in flight as it admits; or raise TooManyAttempts."""
        key = normalise(identifier)
        self._refuse_from_memory(identifier, key, address)
        if self._giving_back.locked():
            # Another request or the background task is giving back what an outage left held,
            # and may be waiting out a silent database: do not queue behind it.
            raise NotReady("login claims from an outage are being given back")
        if self.unreturned:
            # First free what an outage left held; if the database still fails, so does this claim.
            await self.give_back_unreturned()
        pair = self._pairs.get((key, address))
        if pair is None:
            pair = self._pairs[(key, address)] = _Pair()
        deadline = self.clock() + PAIR_QUEUE_WAIT
        held_elsewhere = False
        try:
            while True:
                if pair.active < pair.limit:
                    if held_elsewhere and await self._held_full(key, address):
                        # Look before claiming: a claim locks the address row the attempts
                        # in flight need for their outcome, a look locks nothing.
                        await self._wait_turn(pair, identifier, address, deadline, HELD_POLL)
                        continue
                    pair.active += 1
                    try:
                        return await self._claim_turn(pair, identifier, key, address)
                    except _Held:
                        pair.release()  # another replica's attempts: look again shortly, or when ours end
                    except BaseException:
                        pair.release()
                        raise
                    held_elsewhere = True
                    await self._wait_turn(pair, identifier, address, deadline, HELD_POLL)
                else:
                    await self._wait_turn(pair, identifier, address, deadline, None)
                # The attempt that went before may have closed the pair or the address.
                self._refuse_from_memory(identifier, key, address)
        finally:
            if pair.active == 0 and pair.waiting == 0:
                self._pairs.pop((key, address), None)

    async def _wait_turn(
        self, pair: _Pair, identifier: str, address: str, deadline: float, poll: float | None
    ) -> None:
        """Wait until an attempt of the pair ends here (or `poll` seconds); refuse past the
        queue's bounds."""
        left = deadline - self.clock()
        if left <= 0 or self.queued >= QUEUED_MAX or (poll is None and pair.waiting >= PAIR_QUEUE_MAX):
            self.refusals.add(identifier, address, "queue")
            raise TooManyAttempts(1)
        pair.waiting += 1
        self.queued += 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, poll) if poll is not None else left):
                    await pair.turn.wait()
        finally:
            pair.waiting -= 1
            self.queued -= 1

    async def _held_full(self, key: str, address: str) -> bool:
        async with self.pool.acquire() as conn:
            return await login_backoff.held_full(conn, key, address, self.shared_parallel)

    def end_turn(self, key: str, address: str) -> None:
        """A claimed attempt of the pair reported its outcome (or was given up)."""
        pair = self._pairs.get((key, address))
        if pair is None:
            return
        pair.release()
        if pair.active == 0 and pair.waiting == 0:
            del self._pairs[(key, address)]

    async def _claim_turn(self, pair: _Pair, identifier: str, key: str, address: str) -> Attempt:
        claim: _Claim | None = None
        attempt: Attempt | None = None
        try:
            async with self.pool.acquire() as conn:
                try:
                    # A refusal raises inside the transaction: the tokens already taken roll back.
                    claim = await in_transaction(conn, lambda c: self._claim(c, key, address))
                except _Refused as refused:
                    wait = await self._after_refusal(conn, refused, key, address)
                    self.refusals.add(identifier, address, refused.budget)
                    raise TooManyAttempts(math.ceil(wait)) from None
                pair.limit = claim.parallel
                attempt = Attempt(self, identifier, key, address, claim.account_counted)
        except UNAVAILABLE_ERRORS:
            if attempt is not None:
                # Lost at release (or after): the claim stands, so it is given back later.
                self._give_back_later(attempt, "error")
            raise
        return attempt

    async def abandon(self, attempt: Attempt, outcome: str) -> None:
        """Give back a claim that got no verdict; if the database is away, as soon as it is back.

        A database error is not a failed guess: it must neither count against the account nor
        leave the pair held until the claim expires.
        """
        try:
            await attempt.abandon(outcome)
        except RETRY_LATER:
            self._give_back_later(attempt, outcome)
        finally:
            attempt.end_turn()  # whatever happened: the claim's hold covers the pair meanwhile

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
                except RETRY_LATER:
                    self.unreturned[:0] = unreturned[i:]
                    raise
                except Exception:  # not the database being away: retrying would not help
                    log.warning("could not give back a login claim", exc_info=True)

    def _refuse_from_memory(self, identifier: str, key: str, address: str) -> None:
        now = self.clock()
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
        now = self.clock()
        if len(self._closed) >= REMEMBERED_MAX:
            self._closed = {k: v for k, v in self._closed.items() if v[0] > now}
            if len(self._closed) >= REMEMBERED_MAX:
                self._closed.clear()
        self._closed[closed] = (now + trusted, now + seconds)

    async def _claim(self, conn: asyncpg.Connection, key: str, address: str) -> _Claim:
        """Take from each budget in the lock order; return what was charged."""
        lim = self.limits
        if not await login_budgets.take(conn, "address", address, lim.address.capacity, lim.address.rate):
            raise _Refused("address")
        # A plain read: it locks nothing, so it may come before the rows it decides about.
        known = await known_addresses.is_known(conn, key, address, lim.known_address_age)
        shared = self.shared_parallel if known else 1
        failures = await login_backoff.claim(conn, key, address, CLAIM_HOLD, lim.failure_window, shared)
        if failures is None:
            raise _Refused("backoff")
        parallel = self.parallel if known and failures == 0 else 1
        if known:
            return _Claim(account_counted=False, parallel=parallel)
        if not await login_budgets.take(conn, "account", key, lim.account.capacity, lim.account.rate):
            raise _Refused("account")
        return _Claim(account_counted=True, parallel=parallel)

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
            raise _Held()  # the attempts in flight end soon: wait for them, do not refuse
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


@contextlib.asynccontextmanager
async def running(
    pool: Database, settings: Settings, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[tuple[LoginThrottle, SignupBudget]]:
    """The login throttle and the signup budget of these settings, with their background
    loops for the time of the block; what is pending is written at its end, within a bound."""
    limits = Limits.from_settings(settings)
    throttle = LoginThrottle(pool, limits, settings.max_sleeping, settings.hash_workers, settings.workers, clock)
    async with background.running(
        background.every(PRUNE_EVERY, throttle.prune, "pruning login records"),
        background.every(EVENT_FLUSH_EVERY, throttle.refusals.flush, "recording refused logins"),
        background.every(EVENT_FLUSH_EVERY, throttle.give_back_unreturned, "giving back login claims"),
    ):
        yield throttle, SignupBudget(pool, limits.signup)
    # A database that is gone must not hold up the exit.
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
