"""Verify authsvc access tokens inside another aiohttp service, without calling authsvc per request.

    verifier = TokenVerifier("https://auth.example.com/.well-known/jwks.json",
                             issuer="authsvc", audience="orders")
    app = web.Application(middlewares=[verifier.middleware])
    app.cleanup_ctx.append(verifier.ctx)
    ...
    @require_scopes("orders:read")
    async def handler(request):
        claims = request[CLAIMS]   # the verified claims: sub, sid, scope, exp, ...

The key set is fetched once and cached; a token naming an unknown `kid` triggers a fetch at
once (keys rotate), but not more often than `min_refresh_interval`, so a flood of made-up
kids cannot hammer authsvc. Only asymmetric algorithms are accepted, each key with its own.
A token's validity here is its signature and claims: for revocation within the access-token
lifetime, ask authsvc's introspection endpoint.

Scopes: `request[SCOPES]` holds the token's, `request[SUBJECT_KIND]` says whose it is ("user",
"client" or "api_key") and `request[CLIENT_ID]` names a client. A route asks for scopes with
`@require_scopes("orders:read")`, or the middleware with `required_scopes={"/orders":
("orders:read",)}`; a token without them gets 403 insufficient_scope (RFC 6750 3.1).

API keys (`ak_...`) are opaque: with `introspection=Introspection(url, client_id, secret)`
the verifier asks authsvc about them (cached briefly, see introspection.py); without it they
are refused as invalid tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from authsvc.auth import jwtcheck
from authsvc.verifier import answers
from authsvc.verifier.introspection import (
    API_KEY_TYPE,
    Introspection,
    IntrospectionUnavailable,
    Introspector,
)
from authsvc.verifier.requestkeys import CLAIMS, CLIENT_ID, SCOPES, SUBJECT_KIND
from authsvc.verifier.scopes import ScopeRules, parse_scope, require_scopes

__all__ = [
    "ACCEPTED_ALGORITHMS",
    "CLAIMS",
    "CLIENT_ID",
    "SCOPES",
    "SUBJECT_KIND",
    "Identity",
    "Introspection",
    "IntrospectionUnavailable",
    "KeySet",
    "TokenVerifier",
    "require_scopes",
]

log = logging.getLogger(__name__)

API_KEY_PREFIX = "ak_"
# Only the shape is checked here (URL-safe characters, bounded): what the key is, authsvc says.
_API_KEY = re.compile(r"ak_[A-Za-z0-9_-]{1,250}")

ACCEPTED_ALGORITHMS = frozenset({"EdDSA", "ES256"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class KeySet:
    """The verifier's copy of authsvc's JWKS."""

    def __init__(self, url: str, *, max_age: float, min_refresh_interval: float) -> None:
        self.url = url
        self._max_age = max_age
        self._min_interval = min_refresh_interval
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0

    def _fresh(self) -> bool:
        return time.monotonic() - self._fetched_at < self._max_age

    async def key(self, kid: str) -> jwt.PyJWK | None:
        key = self._keys.get(kid)
        if key is not None and self._fresh():
            return key
        await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        async with self._lock:  # one fetch at a time; the others use its result
            if time.monotonic() - self._fetched_at < self._min_interval:
                return
            self._fetched_at = time.monotonic()  # a failed fetch counts too: no hammering
            try:
                assert self._session is not None, "add verifier.ctx to app.cleanup_ctx"
                async with self._session.get(self.url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    resp.raise_for_status()
                    document = json.loads(await resp.read())
                self._keys = _parse_keys(document)
                self.fetches += 1
            except (aiohttp.ClientError, TimeoutError, ValueError, TypeError) as exc:
                log.warning("could not fetch %s (%s); keeping %d cached keys", self.url, exc, len(self._keys))

    async def ctx(self) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            self._session = session
            yield
            self._session = None


def _parse_keys(document: Any) -> dict[str, jwt.PyJWK]:
    keys = {}
    for entry in document.get("keys", []):
        if not isinstance(entry, dict) or "d" in entry or entry.get("alg") not in ACCEPTED_ALGORITHMS:
            continue  # never a private or symmetric key, never an algorithm we did not pin
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry, algorithm=entry["alg"])
        except (jwt.PyJWTError, KeyError, ValueError, TypeError):
            continue
    return keys


@dataclass(frozen=True)
class Identity:
    """Who a verified bearer token speaks for, and with which scopes."""

    kind: str  # "user", "client" or "api_key"
    scopes: frozenset[str]
    client_id: str | None
    claims: dict[str, Any]  # a JWT's claims, or authsvc's introspection answer for an API key


class TokenVerifier:
    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str,
        audience: str,
        leeway: float = 10,
        public_paths: Iterable[str] = (),
        max_age: float = 300,
        min_refresh_interval: float = 30,
        required_scopes: Mapping[str, Iterable[str]] | None = None,
        introspection: Introspection | None = None,
        legacy_scopes: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = KeySet(jwks_url, max_age=max_age, min_refresh_interval=min_refresh_interval)
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._public = frozenset(public_paths)
        self._rules = ScopeRules(required_scopes or {})
        self.introspector = Introspector(introspection, clock=clock) if introspection else None
        # What a user token from before authsvc wrote `scope` into tokens may do; none by
        # default. During an upgrade: the scopes of authsvc's default role (e.g. profile todos).
        self._legacy_scopes = frozenset(legacy_scopes)

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(contextlib.asynccontextmanager(self.keys.ctx)())
            if self.introspector is not None:
                await stack.enter_async_context(contextlib.asynccontextmanager(self.introspector.ctx)())
            yield

    async def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a valid access token (a JWT), or None."""
        header = jwtcheck.header(token)
        if header is None:
            return None
        key = await self.keys.key(header["kid"])
        if key is None or header.get("alg") != key.algorithm_name:
            return None
        return jwtcheck.claims(
            token,
            key.key,
            key.algorithm_name,
            issuer=self._issuer,
            audience=self._audience,
            leeway=self._leeway,
            required=jwtcheck.REQUIRED_CLAIMS,
        )

    async def identify(self, token: str) -> Identity | None:
        """Whose a bearer token is, or None if it is not valid.

        Raises IntrospectionUnavailable when an API key cannot be checked now.
        """
        if token.startswith(API_KEY_PREFIX):
            if self.introspector is None or not _API_KEY.fullmatch(token):
                return None
            answer = await self.introspector.claims(token)
            if answer is None:
                return None
            scopes = parse_scope(answer.get("scope", ""))
            assert scopes is not None  # the introspector checked it
            return Identity(API_KEY_TYPE, scopes, None, answer)
        claims = await self.verify(token)
        return None if claims is None else self._identity(claims)

    def _identity(self, claims: dict[str, Any]) -> Identity | None:
        """A user token carries `sid`; a client token `client_id` (= sub) and no `sid`."""
        sid, client_id = claims.get("sid"), claims.get("client_id")
        if "scope" in claims:
            scopes = parse_scope(claims["scope"])
        else:
            scopes = self._legacy_scopes if client_id is None else None  # clients never lacked it
        if scopes is None:
            return None
        if isinstance(sid, str) and client_id is None:
            return Identity("user", scopes, None, claims)
        if isinstance(client_id, str) and sid is None and client_id == claims["sub"]:
            return Identity("client", scopes, client_id, claims)
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in self._public or request.method == "OPTIONS":
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return answers.unauthorized("unauthorized")
        try:
            identity = await self.identify(token.strip())
        except IntrospectionUnavailable:
            return answers.unavailable()
        if identity is None:
            return answers.unauthorized("invalid_token")
        if self._rules:
            needed = self._rules.needed(request)
            if not needed <= identity.scopes:
                return answers.insufficient_scope(needed)
        request[CLAIMS] = identity.claims
        request[SCOPES] = identity.scopes
        request[CLIENT_ID] = identity.client_id
        request[SUBJECT_KIND] = identity.kind
        return await handler(request)
