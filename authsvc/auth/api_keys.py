"""API keys: long-lived credentials a person makes for scripts, each with some of their scopes.

A key is `ak_` + an 8-character id part + `_` + 256 random bits (token_urlsafe(32)); only its
SHA-256 is stored (so much randomness needs no slow hash), and its owner is shown the key once
and `ak_` + the id part after that. A key acts with its own scopes within those its owner's
roles grant now: a demoted owner's keys lose what the owner lost, a disabled owner's keys stop.
When a key was last used is kept in memory and written for many keys in one statement every
LAST_USED_FLUSH_EVERY seconds (and at shutdown), not once a request.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from authsvc.auth.principal import API_KEY, Principal
from authsvc.auth.scopes import ScopeModel, format_scopes
from authsvc.db.pool import Database
from authsvc.db.repo import api_keys as key_repo
from authsvc.db.repo import auth_events
from authsvc.db.repo.api_keys import ApiKey
from authsvc.db.repo.users import User
from authsvc.errors import ApiKeyLimit, InvalidScope

log = logging.getLogger(__name__)

PREFIX = "ak_"
ID_PART = 8
SECRET_PART = 43  # characters of token_urlsafe(32)
KEY_LENGTH = len(PREFIX) + ID_PART + 1 + SECRET_PART
MAX_KEYS_PER_USER = 100  # enough for every script one person runs; a stolen session cannot make thousands
LAST_USED_FLUSH_EVERY = 30.0


def looks_like_api_key(token: str) -> bool:
    """Of the shape `ak_XXXXXXXX_...`: a bearer that is not a JWT, resolved in the database."""
    return token.startswith(PREFIX)


def _well_formed(key: str) -> bool:
    return len(key) == KEY_LENGTH and key.isascii() and key[len(PREFIX) + ID_PART] == "_"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _new_key(key_id: uuid.UUID) -> tuple[str, str]:
    """(key, prefix): the id part is the key id's first characters, so the owner can match the
    prefix they are shown to the key they hold."""
    prefix = PREFIX + key_id.hex[:ID_PART]
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


class ApiKeys:
    def __init__(
        self,
        pool: Database,
        scopes: ScopeModel,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        most_per_user: int = MAX_KEYS_PER_USER,
    ) -> None:
        self._pool = pool
        self._scopes = scopes
        self._now = now
        self._most = most_per_user
        self._used: dict[uuid.UUID, datetime] = {}  # key id -> last use, not written yet

    async def create(
        self,
        user: User,
        name: str,
        scopes: list[str],
        expires_in: int | None,
        *,
        within: frozenset[str] | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key for `user` and its text (to show once). Its scopes must be known and within
        what the user's roles grant, and within `within` (the scopes of the login asking: a
        login narrowed to less may not mint more); else InvalidScope."""
        asked = self._scopes.check_names(scopes)
        if not asked:
            raise InvalidScope("Give at least one scope.")
        allowed = self._scopes.of_roles(user.roles)
        if within is not None:
            allowed &= within
        self._scopes.narrow(asked, allowed)
        key_id = uuid.uuid4()
        key, prefix = _new_key(key_id)
        lifetime = timedelta(seconds=expires_in) if expires_in is not None else None
        async with self._pool.acquire() as conn:
            row = await key_repo.insert(
                conn, key_id, user.id, name, prefix, _digest(key), sorted(asked), lifetime, self._most
            )
        if row is None:
            raise ApiKeyLimit(f"An account has at most {self._most} API keys; delete one first.")
        return row, key

    async def list(self, user_id: int) -> list[ApiKey] | None:
        """A user's keys, oldest first; None when there is no such user."""
        async with self._pool.acquire() as conn:
            return await key_repo.select_of_user(conn, user_id)

    async def delete(
        self, user_id: int, key_id: uuid.UUID, *, actor: str | None = None, address: str = ""
    ) -> bool:
        """Delete one of a user's keys; with `actor` (an admin), recorded in auth_events in the
        same transaction. False when the user has no such key."""
        async with self._pool.acquire() as conn, conn.transaction():
            deleted = await key_repo.delete(conn, user_id, key_id)
            if deleted and actor is not None:
                await auth_events.insert_admin(conn, actor, "api_key.delete", f"api_key:{key_id}", address)
        self._used.pop(key_id, None)
        return deleted

    async def _usable(self, key: str) -> tuple[ApiKey, User, frozenset[str]] | None:
        if not _well_formed(key):
            return None
        async with self._pool.acquire() as conn:
            found = await key_repo.select_usable(conn, _digest(key))
        if found is None:
            return None
        row, owner = found
        self._used[row.id] = self._now()
        # What the key was given, within what its owner's roles grant today.
        return row, owner, frozenset(row.scopes) & self._scopes.of_roles(owner.roles)

    async def resolve(self, key: str) -> Principal | None:
        """Who a presented key acts for and with what scopes; None when it is unknown, expired,
        deleted, or its owner is disabled or gone."""
        usable = await self._usable(key)
        if usable is None:
            return None
        row, owner, scopes = usable
        return Principal(API_KEY, scopes, user_id=owner.id, user=owner, api_key_id=row.id)

    async def introspect(self, key: str) -> dict[str, Any]:
        """RFC 7662 for an API key: its owner, scopes and expiry while it is usable."""
        usable = await self._usable(key)
        if usable is None:
            return {"active": False}
        row, owner, scopes = usable
        answer: dict[str, Any] = {
            "active": True,
            "token_type": "api_key",
            "sub": str(owner.id),
            "scope": format_scopes(scopes),
            "key_id": str(row.id),
        }
        if row.expires_at is not None:
            answer["exp"] = int(row.expires_at.timestamp())
        return answer

    async def flush(self) -> None:
        """Write the last uses noted since the previous flush, in one statement. A failed write
        keeps them for the next one (unless a later use came meanwhile)."""
        if not self._used:
            return
        used, self._used = self._used, {}
        try:
            async with self._pool.acquire() as conn:
                await key_repo.record_use(conn, list(used), list(used.values()))
        except BaseException:
            for key_id, at in used.items():
                self._used.setdefault(key_id, at)
            raise
