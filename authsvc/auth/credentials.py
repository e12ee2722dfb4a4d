"""The credential validator shared by every login path (/auth, /auth/token, password change)."""

from __future__ import annotations

import logging

from authsvc.auth.passwords import PasswordHasher
from authsvc.auth.throttle import LoginThrottle
from authsvc.db.pool import Database
from authsvc.db.repo import users
from authsvc.db.repo.users import User
from authsvc.errors import Busy, InvalidCredentials, TooManyAttempts
from authsvc.observability import logs
from authsvc.observability.metrics import Metrics

log = logging.getLogger(__name__)


class Credentials:
    """Checks an identifier and password under the login throttle."""

    def __init__(self, pool: Database, hasher: PasswordHasher, throttle: LoginThrottle, metrics: Metrics) -> None:
        self._pool = pool
        self._hasher = hasher
        self._throttle = throttle
        self._metrics = metrics

    async def authenticate(self, identifier: str, password: str, address: str) -> User:
        """Return the user whose password this is, or raise InvalidCredentials after the backoff;
        count the outcome for /metrics."""
        outcome = "error"
        try:
            user = await self._authenticate(identifier, password, address)
        except InvalidCredentials:
            outcome = "failure"
            raise
        except TooManyAttempts:
            outcome = "throttled"
            raise
        except Busy:
            outcome = "busy"
            raise
        else:
            outcome = "success"
            logs.note_user(user.id)
            return user
        finally:
            self._metrics.login(outcome)

    async def _authenticate(self, identifier: str, password: str, address: str) -> User:
        """The check itself.

        Unknown identifiers take the same path as wrong passwords: same counters, a bcrypt
        check against a dummy hash, the same delay and the same error.
        """
        hasher = self._hasher

        async def check() -> User | None:
            async with self._pool.acquire() as conn:
                user = await users.select_by_email(conn, identifier)
            # The connection is back in the pool before the slow part.
            ok = await hasher.verify(password, user.password_hash if user else None)
            # A disabled account answers as a wrong password does, after the same bcrypt check, and
            # counts as a failure: a refusal that spared the backoff would confirm the password.
            return user if ok and user is not None and user.disabled_at is None else None

        user = await self._throttle.judged(identifier, address, check)
        if user is None:
            raise InvalidCredentials()
        if hasher.needs_rehash(user.password_hash):
            await self._upgrade_hash(user, password)
        return user

    async def _upgrade_hash(self, user: User, password: str) -> None:
        """Re-hash at the configured cost after the cost setting changed; best effort."""
        try:
            new_hash = await self._hasher.hash(password)
            async with self._pool.acquire() as conn:
                await users.update_password_hash(conn, user.id, new_hash, expected_old=user.password_hash)
        except Exception:
            log.warning("could not upgrade the password hash of user %s", user.id, exc_info=True)
            return
        log.info("upgraded the password hash of user %s to the configured cost", user.id)
