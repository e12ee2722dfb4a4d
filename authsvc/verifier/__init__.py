"""Verify authsvc access tokens inside another aiohttp service, without calling authsvc per request.

    verifier = TokenVerifier("https://auth.example.com/.well-known/jwks.json",
                             issuer="authsvc", audience="orders")
    app = web.Application(middlewares=[verifier.middleware])
    app.cleanup_ctx.append(verifier.ctx)
    ...
    async def handler(request):
        claims = request[CLAIMS]   # the verified claims: sub, sid, exp, ...

The key set is fetched once and cached; a token naming an unknown `kid` triggers a fetch at
once (keys rotate), but not more often than `min_refresh_interval`, so a flood of made-up
kids cannot hammer authsvc. Only asymmetric algorithms are accepted, each key with its own.
A token's validity here is its signature and claims: for revocation within the access-token
lifetime, ask authsvc's introspection endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from authsvc.auth import jwtcheck

log = logging.getLogger(__name__)

CLAIMS = web.RequestKey("authsvc_claims", dict)

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
    ) -> None:
        self.keys = KeySet(jwks_url, max_age=max_age, min_refresh_interval=min_refresh_interval)
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._public = frozenset(public_paths)

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        async for _ in self.keys.ctx():
            yield

    async def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a valid access token, or None."""
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

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in self._public or request.method == "OPTIONS":
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized("unauthorized", 'Bearer realm="api"')
        claims = await self.verify(token.strip())
        if claims is None:
            return _unauthorized("invalid_token", 'Bearer realm="api", error="invalid_token"')
        request[CLAIMS] = claims
        return await handler(request)


def _unauthorized(code: str, challenge: str) -> web.Response:
    return web.json_response(
        {"error": code, "message": "A valid bearer token is required."},
        status=401,
        headers={"WWW-Authenticate": challenge},
    )
