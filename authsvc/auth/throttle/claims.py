"""The rows a login takes: the claim before the password is checked, and its outcome after.

Lock order. Every transaction on the login path takes its rows in this order, and never two
rows of one kind:

1. the address budget row (`login_budgets`, scope `address`);
2. the pair's row in `login_backoff`;
3. the pair's row in `login_known_addresses`;
4. the account budget row (`login_budgets`, scope `account`).

A plain read (the known address before the claim) takes no row lock and does not count in the
order. Nothing else takes two of these rows, so claims and outcomes cannot deadlock; what
PostgreSQL still rolls back is retried (db.in_transaction). Every transaction that takes them
is in this module: a new one belongs here too, in the same order (`authsvc throttle reset`
follows it as well, see cli/admin.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from authsvc.auth.throttle.policy import Limits
from authsvc.auth.throttle.queue import PairQueue
from authsvc.db.pool import Database, in_transaction
from authsvc.db.repo import auth_events, known_addresses, login_backoff, login_budgets

# How long a claim stays closed if the process dies between claim and outcome.
CLAIM_HOLD = timedelta(seconds=15)
# A claim given back later than this (the database was away) leaves the hold alone: it has
# expired by itself, and the pair may be held by a newer attempt by then.
RELEASE_WITHIN = CLAIM_HOLD.total_seconds() - 2.0


class Refused(Exception):
    def __init__(self, budget: str, parallel: int = 1) -> None:
        self.budget = budget
        self.parallel = parallel  # what the pair was asked to admit (for a Held)


class Held(Exception):
    """The pair has as many attempts in flight as it admits (on another replica, or ours)."""

    def __init__(self, parallel: int) -> None:
        self.parallel = parallel  # what the claim asked the pair to admit: the look repeats it


@dataclass(frozen=True)
class Claim:
    account_counted: bool
    parallel: int  # attempts the pair admits at once after this claim


async def claim(
    conn: asyncpg.Connection, lim: Limits, key: str, address: str, parallel: int, shared_parallel: int
) -> Claim:
    """Take from each budget in the lock order; return what was charged, or raise Refused.

    `parallel` and `shared_parallel`: the attempts a clean pair at a known address may have in
    flight in this process and in all of them."""
    if not await login_budgets.take(conn, "address", address, lim.address.capacity, lim.address.rate):
        raise Refused("address")
    # A plain read: it locks nothing, so it may come before the rows it decides about.
    known = await known_addresses.is_known(conn, key, address, lim.known_address_age)
    shared = shared_parallel if known else 1
    failures = await login_backoff.claim(conn, key, address, CLAIM_HOLD, lim.failure_window, shared)
    if failures is None:
        raise Refused("backoff", shared)
    admitted = parallel if known and failures == 0 else 1
    if known:
        return Claim(account_counted=False, parallel=admitted)
    if not await login_budgets.take(conn, "account", key, lim.account.capacity, lim.account.rate):
        raise Refused("account")
    return Claim(account_counted=True, parallel=admitted)


async def after_refusal(conn: asyncpg.Connection, lim: Limits, refused: Refused, key: str, address: str) -> float:
    """Apply the address block if that budget ran dry; return the seconds to wait, or raise
    Held if the pair is closed only by attempts in flight (they end soon: wait, do not refuse)."""
    if refused.budget == "address":
        await login_budgets.block(conn, "address", address, lim.address_block)
        return await login_budgets.seconds_until_token(conn, "address", address, lim.address.capacity, lim.address.rate)
    if refused.budget == "account":
        return await login_budgets.seconds_until_token(conn, "account", key, lim.account.capacity, lim.account.rate)
    closed = await login_backoff.closed_for(conn, key, address)
    if not closed.backoff:
        raise Held(refused.parallel)
    return closed.seconds


class Attempt:
    """One claimed login attempt; report exactly one outcome.

    Built with what its outcomes need: the pool and limits to write them, the clock to tell
    whether its hold still stands, and the pair queue whose turn it holds until then."""

    def __init__(
        self,
        pool: Database,
        limits: Limits,
        clock: Callable[[], float],
        turns: PairQueue,
        identifier: str,
        key: str,
        address: str,
        account_counted: bool,
    ) -> None:
        self._pool = pool
        self._limits = limits
        self._clock = clock
        self._turns = turns
        self._identifier = identifier  # as typed, for the event record
        self._key = key
        self._address = address
        self._account_counted = account_counted
        self._claimed_at = clock()
        self._turn_held = True

    def end_turn(self) -> None:
        """The next queued attempt of this pair in this process may go (once)."""
        if self._turn_held:
            self._turn_held = False
            self._turns.end_turn(self._key, self._address)

    # Each outcome takes its rows in the lock order of the module docstring.

    async def succeeded(self) -> None:
        limits = self._limits

        async def work(conn: asyncpg.Connection) -> None:
            await login_budgets.give_back(conn, "address", self._address, limits.address.capacity)
            await login_backoff.reset(conn, self._key, self._address)
            await known_addresses.remember(conn, self._key, self._address)
            if self._account_counted:
                await login_budgets.give_back(conn, "account", self._key, limits.account.capacity)
            await auth_events.insert(conn, self._identifier, self._address, "success")

        async with self._pool.acquire() as conn:
            await in_transaction(conn, work)
        self.end_turn()

    async def failed(self) -> float:
        """Count the failure; return the delay in seconds to apply before answering."""
        limits = self._limits

        async def work(conn: asyncpg.Connection) -> timedelta:
            delay = await login_backoff.record_failure(
                conn, self._key, self._address, limits.backoff_base, limits.backoff_cap
            )
            await auth_events.insert(conn, self._identifier, self._address, "failure")
            return delay

        async with self._pool.acquire() as conn:
            delay = await in_transaction(conn, work)
        self.end_turn()
        return delay.total_seconds()

    async def abandon(self, outcome: str) -> None:
        """No verdict (hash queue full, database trouble): give back the claim and its tokens."""
        limits = self._limits
        held = self._clock() - self._claimed_at < RELEASE_WITHIN

        async def work(conn: asyncpg.Connection) -> None:
            await login_budgets.give_back(conn, "address", self._address, limits.address.capacity)
            if held:
                await login_backoff.release(conn, self._key, self._address)
            if self._account_counted:
                await login_budgets.give_back(conn, "account", self._key, limits.account.capacity)
            await auth_events.insert(conn, self._identifier, self._address, outcome)

        async with self._pool.acquire() as conn:
            await in_transaction(conn, work)
        self.end_turn()
