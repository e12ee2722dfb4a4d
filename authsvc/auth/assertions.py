"""Client assertions (RFC 7523 2.2 and 3): a client proves who it is with a JWT it signed.

The client_credentials grant with private_key_jwt calls `unverified_client_id` to find the
client (and to throttle per client) before any signature work, then `verify` with that
client's keys. The key is chosen by `kid` among the client's own keys and the algorithm is
the key's, never the token's: `alg: none`, HS256 signed with the public key's bytes and keys
named in the token itself all fail. Replay refusal is the caller's: it stores the returned
jti until exp + leeway (client_assertions), so every replica refuses a second use.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from authsvc.auth import jwtcheck

# Signatures that need the private key; HS* would let anyone holding the public JWKS sign.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "jti"]
MAX_ASSERTION = 8 * 1024  # an RSA-4096 assertion is about 1 KB
MAX_JTI = 200
MAX_KID = 100
MAX_CLIENT_ID = 100
MAX_URIS = 1000  # cached jwks_uri sets; clients are made by operators, so this is generous

Resolver = Callable[[str | None], Awaitable[list[jwt.PyJWK]]]


class BadAssertion(Exception):
    """The assertion is refused; the message says why, for logs, never the token itself."""


@dataclass(frozen=True)
class Claims:
    jti: str
    exp: int


def unverified_client_id(assertion: str) -> str | None:
    """The client the assertion claims to come from (iss, equal to sub), read without verifying.

    Only for finding the client and its throttle budget; `verify` then checks everything.
    """
    if not isinstance(assertion, str) or len(assertion) > MAX_ASSERTION or not assertion.isascii():
        return None
    try:
        payload = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    iss, sub = payload.get("iss"), payload.get("sub")
    if not isinstance(iss, str) or iss != sub or not 0 < len(iss) <= MAX_CLIENT_ID:
        return None
    return iss


def parse_jwks(document: Any, *, strict: bool = False) -> list[jwt.PyJWK]:
    """The public asymmetric signing keys of a JWKS document.

    Private, symmetric and encryption keys are dropped (strict: refused, with ValueError, as
    for a set an operator registers).
    """
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        if strict:
            raise ValueError("a JWKS is an object with a list of keys")
        return []
    keys: list[jwt.PyJWK] = []
    for number, entry in enumerate(entries):
        try:
            keys.append(_public_key(entry))
        except ValueError as exc:
            if strict:
                raise ValueError(f"key {number}: {exc}") from None
    if strict and not keys:
        raise ValueError("the JWKS holds no key")
    return keys


def _public_key(entry: Any) -> jwt.PyJWK:
    if not isinstance(entry, dict):
        raise ValueError("not a JWK object")
    if "d" in entry or entry.get("kty") == "oct":
        raise ValueError("a private or symmetric key; register the public key only")
    if entry.get("use", "sig") != "sig":
        raise ValueError("not a signing key")
    kid = entry.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID):
        raise ValueError(f"kid must be a string of at most {MAX_KID} characters")
    try:
        key = jwt.PyJWK(entry)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"not a usable key ({exc})") from None
    if key.algorithm_name not in ASYMMETRIC_ALGORITHMS:
        raise ValueError(f"algorithm {key.algorithm_name} is not accepted")
    return key


@dataclass
class _Remote:
    client: jwt.PyJWKClient
    keys: list[jwt.PyJWK] = field(default_factory=list)
    fetched_at: float = float("-inf")  # the last attempt, failed ones too: no hammering
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one fetch at a time


class ClientKeys:
    """Resolves a client's public keys: its stored JWKS, or its jwks_uri fetched and cached.

    A fetched set is kept `lifespan` seconds; a `kid` not in it triggers a refetch at once
    (the client rotated its key), but not more often than `min_refresh_interval`, so made-up
    kids cannot make us hammer the client's server. A failed fetch keeps the keys we had.
    """

    def __init__(
        self,
        *,
        lifespan: float = 300,
        min_refresh_interval: float = 30,
        timeout: float = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lifespan = lifespan
        self._min_interval = min_refresh_interval
        self._timeout = timeout
        self._clock = clock
        self._remotes: dict[str, _Remote] = {}

    def resolver(self, *, jwks: dict[str, Any] | None = None, jwks_uri: str | None = None) -> Resolver:
        """What `verify` takes as `keys` for a client with this stored jwks or jwks_uri."""
        if jwks is not None:
            keys = parse_jwks(jwks)

            async def stored(kid: str | None) -> list[jwt.PyJWK]:
                return keys

            return stored
        if jwks_uri is not None:
            uri = jwks_uri

            async def remote(kid: str | None) -> list[jwt.PyJWK]:
                return await self.from_uri(uri, kid)

            return remote
        raise ValueError("a client with private_key_jwt has jwks or jwks_uri")

    async def from_uri(self, uri: str, kid: str | None) -> list[jwt.PyJWK]:
        remote = self._remote(uri)
        # Held while deciding too: a request during a fetch waits for its keys, not the old.
        async with remote.lock:
            since = self._clock() - remote.fetched_at
            if since >= self._lifespan or (since >= self._min_interval and _select(remote.keys, kid) is None):
                await self._refresh(remote)
            return remote.keys

    def _remote(self, uri: str) -> _Remote:
        remote = self._remotes.get(uri)
        if remote is None:
            if len(self._remotes) >= MAX_URIS:
                self._remotes.clear()
            try:
                client = jwt.PyJWKClient(uri, cache_jwk_set=False, timeout=self._timeout)
            except jwt.PyJWKClientError as exc:  # not http(s)
                raise BadAssertion(f"unusable jwks_uri ({exc})") from None
            remote = self._remotes[uri] = _Remote(client)
        return remote

    async def _refresh(self, remote: _Remote) -> None:
        remote.fetched_at = self._clock()
        try:
            # urllib blocks: on a thread, off the event loop.
            document = await asyncio.to_thread(remote.client.fetch_data)
        except (jwt.PyJWTError, OSError, ValueError):
            return  # keep the keys we had; the next try waits min_refresh_interval
        remote.keys = parse_jwks(document)


def _select(keys: list[jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    """The key named by kid; without a kid, the only key of the set."""
    if kid is None:
        return keys[0] if len(keys) == 1 else None
    matches = [key for key in keys if key.key_id == kid]
    return matches[0] if len(matches) == 1 else None


async def verify(
    assertion: str,
    *,
    client_id: str,
    keys: list[jwt.PyJWK] | Resolver,
    audiences: tuple[str, ...],
    now: float,
    max_lifetime: int = 300,
    leeway: int = 10,
) -> Claims:
    """The jti and exp of a valid assertion by client_id; BadAssertion otherwise."""
    if not isinstance(assertion, str) or len(assertion) > MAX_ASSERTION or not assertion.isascii():
        raise BadAssertion("not a compact JWT")
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise BadAssertion("not a compact JWT") from None
    if any(name in header for name in jwtcheck.FORBIDDEN_HEADERS):
        raise BadAssertion("the header names a key or an extension")
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ASYMMETRIC_ALGORITHMS:  # before any fetch: junk costs no request
        raise BadAssertion("the algorithm is not an accepted asymmetric one")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID):
        raise BadAssertion("bad kid")
    found = keys if isinstance(keys, list) else await keys(kid)
    key = _select(found, kid)
    if key is None:
        raise BadAssertion("no key of the client matches")
    if alg != key.algorithm_name:
        raise BadAssertion("the algorithm is not the key's")
    try:
        claims = jwt.decode(
            assertion,
            key.key,
            algorithms=[key.algorithm_name],
            audience=list(audiences),
            issuer=client_id,
            # Times are checked below against the `now` we were given.
            options={"require": REQUIRED_CLAIMS, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
    except jwt.InvalidSignatureError:
        raise BadAssertion("bad signature") from None
    except jwt.PyJWTError as exc:
        raise BadAssertion(f"refused ({type(exc).__name__})") from None
    if claims["sub"] != client_id:
        raise BadAssertion("sub is not the client")
    exp = _number(claims, "exp")
    if exp is None or exp + leeway <= now:
        raise BadAssertion("expired")
    if exp > now + max_lifetime + leeway:
        raise BadAssertion("exp is too far ahead")
    for name in ("nbf", "iat"):
        if name in claims:
            value = _number(claims, name)
            if value is None or value > now + leeway:
                raise BadAssertion(f"{name} is in the future")
    jti = claims["jti"]
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
        raise BadAssertion(f"jti must be a string of 1 to {MAX_JTI} characters")
    return Claims(jti=jti, exp=math.ceil(exp))


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value
