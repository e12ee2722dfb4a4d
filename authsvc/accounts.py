"""What a person can do with their own account."""

from __future__ import annotations

import uuid

from aiohttp import web

from . import emails
from .credentials import authenticate
from .errors import EmailTaken, InvalidCredentials, WrongCurrentPassword
from .keys import HASHER, PASSWORD_POLICY, POOL, SIGNUPS
from .repo import sessions as session_repo
from .repo import users
from .repo.users import User


async def signup(
    app: web.Application,
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
        await app[SIGNUPS].take(address)
    await app[PASSWORD_POLICY].check(password, normalised.email, first_name, last_name)
    password_hash = await app[HASHER].hash(password)  # before taking a connection
    async with app[POOL].acquire() as conn:
        user = await users.insert(conn, normalised, password_hash, first_name, last_name)
    if user is None:
        raise EmailTaken()
    return user


async def change_password(
    app: web.Application, user: User, session_id: uuid.UUID, current: str, new: str, address: str
) -> None:
    # The current password goes through the same throttled validator as a login, so a
    # stolen access token cannot be used to guess it quickly.
    try:
        await authenticate(app, user.email, current, address)
    except InvalidCredentials:
        raise WrongCurrentPassword() from None
    # Only after the current password: a caller who has not proved it learns nothing more
    # (403 whatever the new one is), and only proven callers spend the policy's CPU and lookup.
    await app[PASSWORD_POLICY].check(new, user.email, user.first_name, user.last_name)
    new_hash = await app[HASHER].hash(new)
    async with app[POOL].acquire() as conn, conn.transaction():
        await users.update_password_hash(conn, user.id, new_hash)
        # Whoever else knew the old password is logged out; this session goes on.
        await session_repo.revoke_all(conn, user.id, "password_change", keep=session_id)


async def delete(app: web.Application, user: User) -> None:
    async with app[POOL].acquire() as conn:
        await users.delete(conn, user.id)  # todos and sessions go with it (ON DELETE CASCADE)
