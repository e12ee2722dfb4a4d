"""What a person can do with their own account."""

from __future__ import annotations

import uuid

from aiohttp import web

from . import emails
from .credentials import authenticate
from .errors import EmailTaken, InvalidCredentials, WrongCurrentPassword
from .keys import HASHER, POOL
from .repo import sessions as session_repo
from .repo import users
from .repo.users import User


async def signup(app: web.Application, email: str, password: str, first_name: str | None, last_name: str | None) -> User:
    """A new account; EmailTaken when its address, or one that looks like it, has one already.
    emails.InvalidEmail for an address the schema would have refused."""
    address = emails.normalise(email)
    password_hash = await app[HASHER].hash(password)  # before taking a connection
    async with app[POOL].acquire() as conn:
        user = await users.insert(conn, address, password_hash, first_name, last_name)
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
    new_hash = await app[HASHER].hash(new)
    async with app[POOL].acquire() as conn, conn.transaction():
        await users.update_password_hash(conn, user.id, new_hash)
        # Whoever else knew the old password is logged out; this session goes on.
        await session_repo.revoke_all(conn, user.id, "password_change", keep=session_id)


async def delete(app: web.Application, user: User) -> None:
    async with app[POOL].acquire() as conn:
        await users.delete(conn, user.id)  # todos and sessions go with it (ON DELETE CASCADE)
