"""Registered OAuth2 clients: services with identities of their own (client_credentials).

A client proves who it is with a secret (client_secret_basic or _post) or a JWT it signed
(private_key_jwt, RFC 7523). Either way the attempt goes through the login throttle under
"client:" + client_id, and an unknown client, a wrong credential and a disabled client get
the same answer after the same work. Admin actions write their audit row in the same
transaction as the change.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from authsvc.auth import assertions
from authsvc.auth.assertions import BadAssertion, ClientKeys
from authsvc.auth.scopes import ScopeModel, format_scopes
from authsvc.auth.throttle import LoginThrottle
from authsvc.auth.tokens import AccessClaims, TokenService
from authsvc.db.pool import Database
from authsvc.db.repo import auth_events
from authsvc.db.repo import clients as client_repo
from authsvc.db.repo.clients import Client
from authsvc.errors import (
    ClientHasNoSecrets,
    ClientNameTaken,
    InvalidClient,
    InvalidRequest,
    NotFound,
)

log = logging.getLogger(__name__)

SECRET_METHOD = "client_secret"
JWT_METHOD = "private_key_jwt"
METHODS = (SECRET_METHOD, JWT_METHOD)
ID_PREFIX = "cl_"
SECRET_PREFIX = "cs_"
THROTTLE_PREFIX = "client:"  # a client's attempts count apart from any user's logins
# What the clients table takes as an id (migration 0008); anything else names no client.
ID_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Compared against when the client is unknown, so that it costs what a wrong secret costs.
DUMMY_DIGEST = hashlib.sha256(b"no such client").digest()


def _digest(secret: str) -> bytes:
    # 256 random bits: a fast hash is enough, as for refresh tokens.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def new_secret() -> tuple[str, bytes]:
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    return secret, _digest(secret)


def target(client_id: str) -> str:
    """How the audit record names a client."""
    return f"client:{client_id}"


class Clients:
    def __init__(
        self,
        pool: Database,
        scopes: ScopeModel,
        tokens: TokenService,
        throttle: LoginThrottle,
        keys: ClientKeys,
        audiences: tuple[str, ...],
        leeway: int,
        clock: Any = time.time,
    ) -> None:
        """`audiences`: what an assertion's aud may be (the token endpoint's URL, the issuer);
        `clock`: wall-clock seconds, for assertion times."""
        self._pool = pool
        self._scopes = scopes
        self._tokens = tokens
        self._throttle = throttle
        self._keys = keys
        self._audiences = audiences
        self._leeway = leeway
        self._clock = clock

    # --- what the bearer check and introspection need ---

    async def live_scopes(self, client_id: str) -> frozenset[str] | None:
        """The scopes an enabled client may have now; None when it is disabled or gone."""
        async with self._pool.acquire() as conn:
            scopes = await client_repo.select_live_scopes(conn, client_id)
        return frozenset(scopes) if scopes is not None else None

    async def introspect(self, claims: AccessClaims) -> dict[str, Any]:
        """RFC 7662 for a client's token: active only while its client is enabled."""
        assert claims.client_id is not None
        if await self.live_scopes(claims.client_id) is None:
            return {"active": False}
        return {"active": True, "token_type": "access_token", **claims.raw}

    # --- the client_credentials grant ---

    def issue(self, client: Client, requested: frozenset[str] | None) -> dict[str, Any]:
        """The token answer: what the client may have, narrowed to what it asked for
        (InvalidScope past that). A scope no longer configured is not granted."""
        granted = self._scopes.narrow(requested, frozenset(client.scopes) & self._scopes.known)
        return {
            "access_token": self._tokens.issue_client(client.id, granted, client.token_ttl),
            "token_type": "bearer",
            "expires_in": client.token_ttl,
            "scope": format_scopes(granted),
        }

    async def authenticate_secret(self, client_id: str, secret: str, address: str) -> Client:
        """The enabled client_secret client this secret belongs to; InvalidClient after the
        backoff otherwise, the same for an unknown client as for a wrong secret."""
        if not ID_SHAPE.fullmatch(client_id):
            raise InvalidClient()  # no client has such an id: nothing to guess, nothing to count

        async def check() -> Client | None:
            async with self._pool.acquire() as conn:
                found = await client_repo.select_with_secrets(conn, client_id)
            client, digests = found if found is not None else (None, [])
            presented = _digest(secret)
            matched = False
            for digest in digests or [DUMMY_DIGEST]:  # every one compared: no early exit to time
                matched |= hmac.compare_digest(presented, digest)
            usable = client is not None and client.disabled_at is None and client.auth_method == SECRET_METHOD
            return client if matched and usable else None

        client = await self._throttle.judged(THROTTLE_PREFIX + client_id, address, check)
        if client is None:
            raise InvalidClient()
        return client

    async def authenticate_assertion(self, assertion: str, client_id: str | None, address: str) -> Client:
        """private_key_jwt (RFC 7523 3): the enabled client that signed this assertion, which
        has not been used before (its jti is kept until it expires, on every replica);
        InvalidClient after the backoff otherwise. `client_id`: the form's, if it gave one."""
        claimed = assertions.unverified_client_id(assertion)
        if claimed is None or not ID_SHAPE.fullmatch(claimed) or client_id not in (None, claimed):
            raise InvalidClient()  # names no client: nothing to count it against

        async def check() -> Client | None:
            async with self._pool.acquire() as conn:
                client = await client_repo.select(conn, claimed)
            return client if client is not None and await self._assertion_holds(assertion, client) else None

        client = await self._throttle.judged(THROTTLE_PREFIX + claimed, address, check)
        if client is None:
            raise InvalidClient()
        return client

    async def _assertion_holds(self, assertion: str, client: Client) -> bool:
        if client.disabled_at is not None or client.auth_method != JWT_METHOD:
            return False
        try:
            keys = self._keys.resolver(jwks=client.jwks, jwks_uri=client.jwks_uri)
            claims = await assertions.verify(
                assertion, client_id=client.id, keys=keys, audiences=self._audiences, now=self._clock(),
                leeway=self._leeway,
            )
        except (BadAssertion, ValueError) as exc:
            log.info("assertion of client %s refused: %s", client.id, exc)
            return False
        expires_at = datetime.fromtimestamp(claims.exp + self._leeway, UTC)  # past this, exp refuses it
        async with self._pool.acquire() as conn:
            fresh = await client_repo.insert_assertion(conn, client.id, claims.jti, expires_at)
        if not fresh:
            log.warning("assertion of client %s replayed (jti seen before): refused", client.id)
        return fresh

    # --- administration (the admin API and `authsvc clients`) ---

    def _check_method(
        self, method: str, jwks: dict[str, Any] | None, jwks_uri: str | None
    ) -> None:
        if method not in METHODS:
            raise InvalidRequest(f"auth_method must be one of {', '.join(METHODS)}.")
        if method == SECRET_METHOD and (jwks is not None or jwks_uri is not None):
            raise InvalidRequest("A client_secret client has no jwks or jwks_uri.")
        if method == JWT_METHOD and (jwks is None) == (jwks_uri is None):
            raise InvalidRequest("A private_key_jwt client needs exactly one of jwks or jwks_uri.")
        if jwks is not None:
            try:
                assertions.parse_jwks(jwks, strict=True)
            except ValueError as exc:
                raise InvalidRequest(f"jwks: {exc}.") from None

    async def create(
        self,
        name: str,
        scopes: list[str],
        method: str,
        jwks: dict[str, Any] | None,
        jwks_uri: str | None,
        token_ttl: int,
        actor: str,
        address: str,
    ) -> tuple[Client, str | None]:
        """A new client and, for client_secret, its first secret (shown once, stored as a digest)."""
        self._check_method(method, jwks, jwks_uri)
        granted = sorted(self._scopes.check_names(scopes))  # InvalidScope for an unknown name
        client_id = ID_PREFIX + secrets.token_hex(8)
        secret, digest = new_secret() if method == SECRET_METHOD else (None, None)
        async with self._pool.acquire() as conn, conn.transaction():
            client = await client_repo.insert(conn, client_id, name, granted, method, jwks, jwks_uri, token_ttl)
            if client is None:
                raise ClientNameTaken()
            if digest is not None:
                await client_repo.insert_secret(conn, client_id, digest)
            await auth_events.insert_admin(conn, actor, "client.create", target(client_id), address)
        return client, secret

    async def list_all(self) -> list[Client]:
        async with self._pool.acquire() as conn:
            return await client_repo.select_all(conn)

    async def rotate(self, client_id: str, actor: str, address: str) -> str:
        """A new secret beside the old ones (both work until `retire`); shown once."""
        secret, digest = new_secret()
        async with self._pool.acquire() as conn, conn.transaction():
            client = await client_repo.select(conn, client_id)
            if client is None:
                raise NotFound("No such client.")
            if client.auth_method != SECRET_METHOD:
                raise ClientHasNoSecrets()
            await client_repo.insert_secret(conn, client_id, digest)
            await auth_events.insert_admin(conn, actor, "client.rotate", target(client_id), address)
        return secret

    async def retire(self, client_id: str, actor: str, address: str) -> int:
        """Retire every secret but the newest; how many were retired."""
        async with self._pool.acquire() as conn, conn.transaction():
            if await client_repo.select(conn, client_id) is None:
                raise NotFound("No such client.")
            retired = await client_repo.retire_older_secrets(conn, client_id)
            await auth_events.insert_admin(conn, actor, "client.retire", target(client_id), address)
        return retired

    async def set_disabled(self, client_id: str, disabled: bool, actor: str, address: str) -> Client:
        """Disable (its tokens stop at once: every request reads the client) or enable."""
        action = "client.disable" if disabled else "client.enable"
        async with self._pool.acquire() as conn, conn.transaction():
            client = await client_repo.set_disabled(conn, client_id, disabled)
            if client is None:
                raise NotFound("No such client.")
            await auth_events.insert_admin(conn, actor, action, target(client_id), address)
        return client

    async def delete(self, client_id: str, actor: str, address: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            if not await client_repo.delete(conn, client_id):
                raise NotFound("No such client.")
            await auth_events.insert_admin(conn, actor, "client.delete", target(client_id), address)

    async def prune(self) -> None:
        """Drop the assertions past their expiry (a replay of one fails on exp anyway)."""
        async with self._pool.acquire() as conn:
            await client_repo.prune_assertions(conn)
