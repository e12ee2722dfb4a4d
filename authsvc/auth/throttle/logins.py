"""The login throttle: memory first, then what an outage left held, then the pair's turn, then
the claim (claims.py); and the outcome's delay and the pruning of old records.

Each piece is built here, once, from the pool, the limits and the clock: memory.py (refusals
repeated without a transaction), events.py (refusals recorded in batches), queue.py (turns per
pair), outage.py (claims to give back later), claims.py (the rows, in the lock order).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import asyncpg

from authsvc.auth.throttle.claims import (
    Attempt,
    Claim,
    Held,
    Refused,
    after_refusal,
    claim,
)
from authsvc.auth.throttle.events import RefusalEvents
from authsvc.auth.throttle.memory import Memory
from authsvc.auth.throttle.outage import Abandonable, Unreturned
from authsvc.auth.throttle.policy import Limits, normalise
from authsvc.auth.throttle.queue import HELD_POLL, Pair, PairQueue, QueueFull
from authsvc.db.pool import UNAVAILABLE_ERRORS, Database, NotReady, in_transaction
from authsvc.db.repo import auth_events, known_addresses, login_backoff, login_budgets
from authsvc.errors import Busy, TooManyAttempts

PRUNE_EVERY = 300.0


def prunes(lim: Limits) -> dict[str, Callable[[asyncpg.Connection], Awaitable[int]]]:
    """What the prune loop deletes, table by table, with the ages it passes; in its order."""
    return {
        "login_backoff": lambda conn: login_backoff.prune(conn, lim.failure_window),
        # A bucket untouched for a full refill period is full again: its row says nothing.
        "login_budgets": lambda conn: login_budgets.prune(conn, max(timedelta(hours=1), lim.address_block)),
        "known_addresses": lambda conn: known_addresses.prune(conn, lim.known_address_age),
        "auth_events": lambda conn: auth_events.prune(conn, lim.events_kept),
    }


T = TypeVar("T")


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
        self.turns = PairQueue(clock)
        self.refusals = RefusalEvents(pool)
        self.memory = Memory(limits.memory, clock)
        self.outage = Unreturned()

    # What tests and the shutdown report look at, under the names they have always had.

    @property
    def queued(self) -> int:
        """Requests now waiting for their pair's turn in this process."""
        return self.turns.queued

    @property
    def unreturned(self) -> list[tuple[Abandonable, str]]:
        """Claims to give back when the database is back."""
        return self.outage.claims

    @property
    def owes_claims(self) -> bool:
        """Claims an outage left held are still to be given back (or being given back now)."""
        return self.outage.owed

    async def give_back_unreturned(self) -> None:
        await self.outage.give_back()

    async def acquire(self, identifier: str, address: str) -> Attempt:
        """Claim an attempt under all three budgets, waiting for the pair's turn if it has
        as many attempts in flight as it admits; or raise TooManyAttempts."""
        key = normalise(identifier)
        self._refuse_from_memory(identifier, key, address)
        if self.outage.giving_back:
            # Another request or the background task is giving back what an outage left held,
            # and may be waiting out a silent database: do not queue behind it.
            raise NotReady("login claims from an outage are being given back")
        if self.outage.claims:
            # First free what an outage left held; if the database still fails, so does this claim.
            await self.outage.give_back()
        pair = self.turns.pair(key, address)
        deadline = self.turns.deadline()
        held: Held | None = None  # the last claim found the pair full of others' attempts
        try:
            while True:
                if pair.active < pair.limit:
                    if held is not None and await self._held_full(key, address, held.parallel):
                        # Look before claiming: a claim locks the address row the attempts
                        # in flight need for their outcome, a look locks nothing.
                        await self._wait_turn(pair, identifier, address, deadline, HELD_POLL)
                        continue
                    pair.active += 1
                    try:
                        return await self._claim_turn(pair, identifier, key, address)
                    except Held as full:
                        held = full
                        pair.release()  # another replica's attempts: look again shortly, or when ours end
                    except BaseException:
                        pair.release()
                        raise
                    await self._wait_turn(pair, identifier, address, deadline, HELD_POLL)
                else:
                    await self._wait_turn(pair, identifier, address, deadline, None)
                # The attempt that went before may have closed the pair or the address.
                self._refuse_from_memory(identifier, key, address)
        finally:
            self.turns.forget_if_idle(pair, key, address)

    async def _wait_turn(self, pair: Pair, identifier: str, address: str, deadline: float, poll: float | None) -> None:
        try:
            await self.turns.wait_turn(pair, deadline, poll)
        except QueueFull:
            self.refusals.add(identifier, address, "queue")
            raise TooManyAttempts(1) from None

    async def _held_full(self, key: str, address: str, parallel: int) -> bool:
        async with self.pool.acquire() as conn:
            return await login_backoff.held_full(conn, key, address, self.limits.failure_window, parallel)

    async def _claim_turn(self, pair: Pair, identifier: str, key: str, address: str) -> Attempt:
        claimed: Claim | None = None
        attempt: Attempt | None = None
        lim = self.limits
        try:
            async with self.pool.acquire() as conn:
                try:
                    # A refusal raises inside the transaction: the tokens already taken roll back.
                    claimed = await in_transaction(
                        conn, lambda c: claim(c, lim, key, address, self.parallel, self.shared_parallel)
                    )
                except Refused as refused:
                    wait = await after_refusal(conn, lim, refused, key, address)
                    # Never an account refusal: it depends on the owner's known addresses.
                    if refused.budget == "address":
                        self.memory.remember(("address", address), wait)
                    elif refused.budget == "backoff":
                        self.memory.remember((key, address), wait)
                    self.refusals.add(identifier, address, refused.budget)
                    raise TooManyAttempts(math.ceil(wait)) from None
                pair.limit = claimed.parallel
                attempt = Attempt(
                    self.pool, lim, self.clock, self.turns, identifier, key, address, claimed.account_counted
                )
        except UNAVAILABLE_ERRORS:
            if attempt is not None:
                # Lost at release (or after): the claim stands, so it is given back later.
                self.outage.later(attempt, "error")
            raise
        return attempt

    async def judged(self, identifier: str, address: str, check: Callable[[], Awaitable[T | None]]) -> T | None:
        """One attempt under the throttle, for every kind of credential (a user's password, a
        client's secret or assertion): `check` gives what the credential proves, or None. Its
        verdict is recorded; a failure's backoff is awaited before None is returned; a check
        that raised (hash queue full, database trouble) gets no verdict, and its claim is given
        back, now or once the database is back, so that it counts as no attempt at all."""
        attempt = await self.acquire(identifier, address)
        try:
            found = await check()
            if found is not None:
                await attempt.succeeded()
                return found
            delay = await attempt.failed()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.abandon(attempt, "busy" if isinstance(exc, Busy) else "error"))
            raise
        await self.delay(delay)
        return None

    async def abandon(self, attempt: Attempt, outcome: str) -> None:
        """Give back a claim that got no verdict; if the database is away, as soon as it is back.

        A database error is not a failed guess: it must neither count against the account nor
        leave the pair held until the claim expires.
        """
        try:
            await self.outage.abandon(attempt, outcome)
        finally:
            attempt.end_turn()  # whatever happened: the claim's hold covers the pair meanwhile

    def _refuse_from_memory(self, identifier: str, key: str, address: str) -> None:
        refusal = self.memory.refusal(key, address)
        if refusal is not None:
            budget, seconds = refusal
            self.refusals.add(identifier, address, budget)
            raise TooManyAttempts(math.ceil(seconds))

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
        async with self.pool.acquire() as conn:
            for prune in prunes(self.limits).values():
                await prune(conn)
