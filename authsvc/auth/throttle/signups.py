"""The signup budget: a token bucket per client address, shared by every replica."""

from __future__ import annotations

import math

from authsvc.auth.throttle.policy import Bucket
from authsvc.db.pool import Database
from authsvc.db.repo import login_budgets
from authsvc.errors import TooManyAttempts


class SignupBudget:
    """Signups per client address, a token bucket shared by every replica: each attempt takes
    a token before any hashing, whatever its outcome, so signup can be neither a fast oracle
    for registered emails nor a way to keep the hashing threads busy from one address."""

    def __init__(self, pool: Database, bucket: Bucket) -> None:
        self._pool = pool
        self._bucket = bucket

    async def take(self, address: str) -> None:
        """Take a token, or raise TooManyAttempts with the seconds until the next one."""
        b = self._bucket
        async with self._pool.acquire() as conn:
            if await login_budgets.take(conn, b.scope, address, b.capacity, b.rate):
                return
            wait = await login_budgets.seconds_until_token(conn, b.scope, address, b.capacity, b.rate)
        raise TooManyAttempts(math.ceil(wait))
