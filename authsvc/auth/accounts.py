"""What a person can do with their own account."""

from __future__ import annotations

import uuid

from authsvc.auth import emails
from authsvc.auth.credentials import Credentials
from authsvc.auth.password_policy import PasswordPolicy
from authsvc.auth.passwords import PasswordHasher
from authsvc.auth.throttle import SignupBudget
from authsvc.db.pool import Database
from authsvc.db.repo import sessions as session_repo
from authsvc.db.repo import users
from authsvc.db.repo.users import User
from authsvc.errors import EmailTaken, InvalidCredentials, WrongCurrentPassword


class Accounts:
    """Signing up, changing the password, deleting the account.

    `signups` and `credentials` may be None where nobody signs up from an address or
    changes a password (an operator's `authsvc users create`)."""

    def __init__(
        self,
        pool: Database,
        hasher: PasswordHasher,
        policy: PasswordPolicy,
        signups: SignupBudget | None = None,
        credentials: Credentials | None = None,
        default_role: str = "user",
    ) -> None:
        self._pool = pool
        self._hasher = hasher
        self._policy = policy
        self._signups = signups
        self._credentials = credentials
        self._default_role = default_role

    async def signup(
        self,
        email: str,
        password: str,
        first_name: str | None,
        last_name: str | None,
        address: str | None = None,
    ) -> User:
        """Create an account; `address` is the client's, whose signup budget it takes (None: an
        operator's command, which has none). EmailTaken when the email, or one that looks like
        it, has an account already; emails.InvalidEmail for an address the schema would refuse."""
        normalised = emails.normalise(email)
        # The budget before the policy: its work (zxcvbn, a breached-password look-up when
        # configured) is paid for like the hash, so a client cannot drive it past its budget.
        if address is not None:
            assert self._signups is not None, "signups from an address need the signup budget"
            await self._signups.take(address)
        await self._policy.check(password, normalised.email, first_name, last_name)
        password_hash = await self._hasher.hash(password)  # before taking a connection
        async with self._pool.acquire() as conn:
            user = await users.insert(conn, normalised, password_hash, first_name, last_name, [self._default_role])
        if user is None:
            raise EmailTaken()
        return user

    async def change_password(self, user: User, session_id: uuid.UUID, current: str, new: str, address: str) -> None:
        assert self._credentials is not None, "a password change checks the current one"
        # The current password goes through the same throttled validator as a login, so a
        # stolen access token cannot be used to guess it quickly.
        try:
            await self._credentials.authenticate(user.email, current, address)
        except InvalidCredentials:
            raise WrongCurrentPassword() from None
        # Only after the current password: a caller who has not proved it learns nothing more
        # (403 whatever the new one is), and only proven callers spend the policy's CPU and lookup.
        await self._policy.check(new, user.email, user.first_name, user.last_name)
        new_hash = await self._hasher.hash(new)
        async with self._pool.acquire() as conn, conn.transaction():
            await users.update_password_hash(conn, user.id, new_hash)
            # Whoever else knew the old password is logged out; this session goes on.
            await session_repo.revoke_all(conn, user.id, "password_change", keep=session_id)

    async def delete(self, user: User) -> None:
        async with self._pool.acquire() as conn:
            await users.delete(conn, user.id)  # todos and sessions go with it (ON DELETE CASCADE)
