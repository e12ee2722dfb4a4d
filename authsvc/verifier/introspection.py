"""API keys are opaque: authsvc's RFC 7662 endpoint says what one is, and its answer is cached.

An active answer is kept for a short, bounded time (a deleted key keeps working here for at
most `ttl` seconds), an inactive one briefly (a flood of made-up keys costs authsvc one call
each per `inactive_ttl`), and concurrent requests with the same key share one call. The cache
is keyed by a digest: the verifier keeps no token in memory beyond the request, and logs none.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from authsvc.verifier.scopes import parse_scope

log = logging.getLogger(__name__)

API_KEY_TYPE = "api_key"


class IntrospectionUnavailable(Exception):
    """authsvc could not be asked, or gave no usable answer: neither yes nor no."""


@dataclass(frozen=True)
class Introspection:
    """Where and as whom to ask: a client of authsvc allowed to introspect (client_secret_basic)."""

    url: str  # e.g. https://auth.example.com/auth/introspect
    client_id: str
    client_secret: str = field(repr=False)
    ttl: float = 10  # seconds an active answer is trusted (never beyond the key's exp)
    inactive_ttl: float = 2
    max_entries: int = 10_000
    timeout: float = 3

    def __post_init__(self) -> None:
        if not (0 < self.ttl <= 300 and 0 <= self.inactive_ttl <= self.ttl and self.max_entries > 0):
            raise ValueError("Introspection: 0 < ttl <= 300, 0 <= inactive_ttl <= ttl, max_entries > 0")
        if ":" in self.client_id:
            raise ValueError("Introspection: a client_id cannot hold ':' (HTTP Basic)")


class Introspector:
    def __init__(self, config: Introspection, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        # client_secret_basic built by hand: aiohttp.BasicAuth is deprecated in 3.14, absent in 4.
        credential = base64.b64encode(f"{config.client_id}:{config.client_secret}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {credential}"}
        self._cache: dict[bytes, tuple[float, dict[str, Any] | None]] = {}  # digest -> (until, answer)
        self._pending: dict[bytes, asyncio.Task[dict[str, Any] | None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0  # requests made to authsvc

    async def ctx(self) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            self._session = session
            yield
            self._session = None

    async def claims(self, token: str) -> dict[str, Any] | None:
        """authsvc's answer for an active API key, None for anything else.

        Raises IntrospectionUnavailable when authsvc cannot say.
        """
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            if self._clock() < hit[0]:
                return hit[1]
            del self._cache[digest]
        task = self._pending.get(digest)
        if task is None:
            task = asyncio.ensure_future(self._ask(token))
            self._pending[digest] = task
            task.add_done_callback(lambda done: self._settle(digest, done))
        # Shielded: a caller that goes away does not cancel the answer the others wait for.
        return await asyncio.shield(task)

    def _settle(self, digest: bytes, task: asyncio.Task[dict[str, Any] | None]) -> None:
        del self._pending[digest]
        if task.cancelled() or task.exception() is not None:  # failures are not cached
            return
        answer = task.result()
        ttl = self.config.inactive_ttl
        if answer is not None:
            ttl = self.config.ttl
            if isinstance(answer.get("exp"), int):
                ttl = min(ttl, answer["exp"] - time.time())
        if ttl <= 0:
            return
        if len(self._cache) >= self.config.max_entries:
            self._evict()
        self._cache[digest] = (self._clock() + ttl, answer)

    def _evict(self) -> None:
        now = self._clock()
        for digest in [d for d, (until, _) in self._cache.items() if until <= now]:
            del self._cache[digest]
        while len(self._cache) >= self.config.max_entries:
            del self._cache[next(iter(self._cache))]  # the oldest entry

    async def _ask(self, token: str) -> dict[str, Any] | None:
        assert self._session is not None, "add verifier.ctx to app.cleanup_ctx"
        self.calls += 1
        try:
            async with self._session.post(
                self.config.url,
                data={"token": token},
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                allow_redirects=False,  # the token is in the body: never re-sent elsewhere
            ) as resp:
                if resp.status != 200:
                    # 401 here is our own credential refused: the operator must see it.
                    log.warning("introspection at %s answered %d", self.config.url, resp.status)
                    raise IntrospectionUnavailable()
                body = json.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("introspection at %s failed (%s)", self.config.url, type(exc).__name__)
            raise IntrospectionUnavailable() from None
        if not isinstance(body, dict):
            log.warning("introspection at %s answered something other than an object", self.config.url)
            raise IntrospectionUnavailable()
        return _active_api_key(body)


def _active_api_key(body: dict[str, Any]) -> dict[str, Any] | None:
    """The answer if it is an active API key with what we rely on, else None."""
    if body.get("active") is not True or body.get("token_type") != API_KEY_TYPE:
        return None  # an `ak_` token reported as any other kind is not one we accept
    sub, exp = body.get("sub"), body.get("exp")
    if not isinstance(sub, str) or not sub or parse_scope(body.get("scope", "")) is None:
        return None
    if exp is not None and (not isinstance(exp, int) or isinstance(exp, bool) or exp <= time.time()):
        return None
    return body
