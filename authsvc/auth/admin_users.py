"""What an admin (scope `admin`) or an operator's command can do to any user's account.

Each change and its audit record (auth_events, outcome 'admin') go in one transaction: an
action is recorded exactly when it took effect."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from authsvc.auth.principal import OPERATOR, Principal
from authsvc.auth.scopes import ScopeModel
from authsvc.db.pool import Database
from authsvc.db.repo import auth_events, users
from authsvc.db.repo import sessions as session_repo
from authsvc.db.repo.users import User
from authsvc.errors import NotFound, OwnAccount, UnknownRole


@dataclass(frozen=True)
class Change:
    """A user after an action, whether it changed anything, and the login sessions it ended."""

    user: User
    changed: bool
    sessions_ended: int = 0


def target(user_id: int) -> str:
    """How the audit record names a user acted on."""
    return f"user:{user_id}"


class UserAdmin:
    """`by` is who acts: a Principal with scope admin (the HTTP routes check it), or None for
    an operator's command (authsvc.cli), recorded as `operator`. `address` is the caller's."""

    def __init__(self, pool: Database, scopes: ScopeModel) -> None:
        self._pool = pool
        self._scopes = scopes

    async def search(self, email_prefix: str | None, after_id: int, limit: int) -> list[User]:
        async with self._pool.acquire() as conn:
            return await users.select_page(conn, email_prefix, after_id, limit)

    async def get(self, user_id: int) -> User:
        async with self._pool.acquire() as conn:
            return _found(await users.select_by_id(conn, user_id))

    async def by_email(self, email: str) -> User:
        """The account an email names, spelt as a login would spell it (authsvc/emails.py)."""
        async with self._pool.acquire() as conn:
            return _found(await users.select_by_email(conn, email))

    async def disable(self, by: Principal | None, user_id: int, address: str) -> Change:
        """No login from now on, and every session ends at once: each request reads its session
        with the user, so even an unexpired access token is refused on its next use. Disabling
        again ends what a session begun meanwhile left behind."""
        _not_self(by, user_id)
        async with self._pool.acquire() as conn, conn.transaction():
            user = _found(await users.select_by_id(conn, user_id, lock=True))
            changed = user.disabled_at is None
            if changed:
                user = _found(await users.set_disabled(conn, user_id, True))
            ended = await session_repo.revoke_all(conn, user_id, "disabled")
            await auth_events.insert_admin(conn, _actor(by), "user.disable", target(user_id), address)
        return Change(user, changed, ended)

    async def enable(self, by: Principal | None, user_id: int, address: str) -> Change:
        """Logging in works again; the sessions the disabling ended stay ended."""
        async with self._pool.acquire() as conn, conn.transaction():
            user = _found(await users.select_by_id(conn, user_id, lock=True))
            changed = user.disabled_at is not None
            if changed:
                user = _found(await users.set_disabled(conn, user_id, False))
            await auth_events.insert_admin(conn, _actor(by), "user.enable", target(user_id), address)
        return Change(user, changed)

    async def delete(self, by: Principal | None, user_id: int, address: str) -> None:
        _not_self(by, user_id)
        async with self._pool.acquire() as conn, conn.transaction():
            if not await users.delete(conn, user_id):  # sessions, todos and keys go with it
                raise NotFound("No such user.")
            await auth_events.insert_admin(conn, _actor(by), "user.delete", target(user_id), address)

    async def set_roles(self, by: Principal | None, user_id: int, roles: Iterable[str], address: str) -> Change:
        """Give the user exactly these roles. When they grant less than the old ones did, the
        user's login sessions end at once: their tokens carry the old scopes, and a refresh
        would only narrow them at the next one. More scopes need no new login: the next
        refresh carries them."""
        wanted = sorted(set(roles))
        unknown = [role for role in wanted if role not in self._scopes.roles]
        if unknown:
            known = ", ".join(sorted(self._scopes.roles))
            raise UnknownRole(f"{unknown[0]!r} is not a role here (AUTHSVC_ROLES defines: {known}).")
        granted = self._scopes.of_roles(wanted)
        async with self._pool.acquire() as conn, conn.transaction():
            user = _found(await users.select_by_id(conn, user_id, lock=True))
            lost = self._scopes.of_roles(user.roles) - granted
            if lost:
                _not_self(by, user_id)
            changed = sorted(user.roles) != wanted
            ended = 0
            if changed:
                user = _found(await users.set_roles(conn, user_id, wanted))
                if lost:
                    ended = await session_repo.revoke_all(conn, user_id, "roles_changed")
            await auth_events.insert_admin(conn, _actor(by), "user.roles", target(user_id), address)
        return Change(user, changed, ended)


def _found(user: User | None) -> User:
    if user is None:
        raise NotFound("No such user.")
    return user


def _actor(by: Principal | None) -> str:
    return OPERATOR if by is None else by.actor


def _not_self(by: Principal | None, user_id: int) -> None:
    # An admin who locks themselves out needs an operator to get back in; a client has no
    # account of its own here, and an operator's command is the way back, so both may.
    if by is not None and by.user_id == user_id:
        raise OwnAccount()
