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

One job a module:

- policy.py: the limits the settings give, and the key an identifier counts under;
- claims.py: the rows a claim and its outcome take, in the lock order written there;
- queue.py: the turns of each pair in this process, and the queue's bounds;
- memory.py: refusals repeated without a transaction, and for how long;
- events.py: refused attempts recorded in batches;
- outage.py: claims to give back once the database is back;
- logins.py: LoginThrottle, which puts these together for one login;
- signups.py: the signup budget;
- here: `running`, the background loops and the bounded flush at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from authsvc import background
from authsvc.auth.throttle.claims import Attempt
from authsvc.auth.throttle.events import EVENT_FLUSH_EVERY, RefusalEvents
from authsvc.auth.throttle.logins import PRUNE_EVERY, LoginThrottle
from authsvc.auth.throttle.memory import MEMORY_MARGIN, Memory
from authsvc.auth.throttle.policy import Bucket, Limits, normalise
from authsvc.auth.throttle.signups import SignupBudget
from authsvc.db.pool import CLIENT_MARGIN, Database
from authsvc.settings import Settings

__all__ = [
    "MEMORY_MARGIN",
    "Attempt",
    "Bucket",
    "Limits",
    "LoginThrottle",
    "RefusalEvents",
    "SignupBudget",
    "normalise",
    "running",
]

log = logging.getLogger(__name__)


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
        yield throttle, SignupBudget(pool, limits.signup, Memory(limits.memory, clock))
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
