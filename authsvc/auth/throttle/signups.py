"""The signup budget: a token bucket per client address, shared by every replica."""

from __future__ import annotations

import math

from authsvc.auth.throttle.memory import Memory
from authsvc.auth.throttle.policy import Bucket
from authsvc.db.pool import Database
from authsvc.db.repo import login_budgets
from authsvc.errors import TooManyAttempts


class SignupBudget:
    """Signups per client address, a token bucket shared by every replica: each attempt takes
    a token before any hashing, whatever its outcome, so signup can be neither a fast oracle
    for registered emails nor a way to keep the hashing threads busy from one address."""

    def __init__(self, pool: Database, bucket: Bucket, memory: Memory) -> None:
        self._pool = pool
        self._bucket = bucket
        self._memory = memory  # refusals repeated without a transaction (see memory.py)

    def refuse_from_memory(self, address: str) -> None:
        """Raise the remembered refusal of this address, if any: cheap enough to come before
        the body is even read, so a signup flood costs a look-up per request."""
        wait = self._memory.remembered((self._bucket.scope, address))
        if wait is not None:
            raise TooManyAttempts(math.ceil(wait))

    async def take(self, address: str) -> None:
        """Take a token, or raise TooManyAttempts with the seconds until the next one."""
        self.refuse_from_memory(address)
        b = self._bucket
        async with self._pool.acquire() as conn:
            if await login_budgets.take(conn, b.scope, address, b.capacity, b.rate):
                return
            wait = await login_budgets.seconds_until_token(conn, b.scope, address, b.capacity, b.rate)
        self._memory.remember((b.scope, address), wait)
        raise TooManyAttempts(math.ceil(wait))
