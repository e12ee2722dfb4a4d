"""Section g of bench/perf.py: what service identities cost, beside a user's access token.

- client_credentials tokens per second: a registered client's secret (client_secret_basic),
  and a private_key_jwt assertion (Ed25519, each with its own jti, made before the clock
  starts so the load generator's signing is not counted), from CLIENTS closed-loop clients;
- GET /users/me authenticated by an API key against the same with an access token, the two
  taking turns in rounds like the read targets (perf.compare_reads). Target: a request by API
  key costs at most 1.2x one by access token (requests/s at least 1/1.2 of its).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import asyncpg
import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

CLIENTS = 8
WARMUP = 1.0
API_KEY_TARGET = 1.2  # an API-key request may cost this many access-token requests


async def _admin_token(base: str, database_url: str, email: str, password: str) -> str:
    """An admin, as `authsvc users roles EMAIL admin user` makes one (here straight in SQL)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE users SET roles = '{admin,user}' WHERE email = $1", email)
    finally:
        await conn.close()
    async with aiohttp.ClientSession() as http, http.post(
        base + "/auth", json={"email": email, "password": password}
    ) as resp:
        return (await resp.json())["access_token"]


async def _post_json(base: str, path: str, body: dict[str, Any], token: str, expected: int = 201) -> Any:
    async with aiohttp.ClientSession() as http, http.post(
        base + path, json=body, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        answer = await resp.json()
        if resp.status != expected:
            raise RuntimeError(f"POST {path}: {resp.status} {answer}")
        return answer


def _assertions(client_id: str, key: ed25519.Ed25519PrivateKey, kid: str, audience: str, count: int) -> list[str]:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": now, "exp": now + 280}
    return [
        jwt.encode({**claims, "jti": secrets.token_urlsafe(16)}, key, algorithm="EdDSA", headers={"kid": kid})
        for _ in range(count)
    ]


async def token_rate(
    base: str, form_of: Callable[[int], dict[str, str]], headers: dict[str, str], seconds: float
) -> dict[str, Any]:
    """client_credentials tokens per second over `seconds` after a warm-up, from CLIENTS clients."""
    began = time.monotonic()
    window = (began + WARMUP, began + WARMUP + seconds)
    statuses: Counter[int] = Counter()
    counted = 0
    latencies: list[float] = []
    turn = iter(range(10**9))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one() -> None:
            nonlocal counted
            while time.monotonic() < window[1]:
                form = form_of(next(turn))
                started = time.monotonic()
                async with http.post(base + "/auth/token", data=form, headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
                    if resp.status == 200 and window[0] <= started:
                        counted += 1
                        latencies.append(time.monotonic() - started)

        await asyncio.gather(*(one() for _ in range(CLIENTS)))
    latencies.sort()
    return {
        "clients": CLIENTS,
        "seconds": seconds,
        "tokens_per_second": counted / seconds,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
        "answers": {str(k): v for k, v in sorted(statuses.items())},
    }


async def measure(
    base: str,
    database_url: str,
    emails: Sequence[str],
    tokens: dict[str, str],
    password: str,
    seconds: float,
    compare: Callable[[dict[str, tuple[str, Sequence[tuple[str, str]]]]], Awaitable[dict[str, Any]]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    run = secrets.token_hex(3)
    admin = await _admin_token(base, database_url, emails[-1], password)
    made = await _post_json(base, "/admin/clients", {"name": f"bench-secret-{run}", "scopes": ["todos"]}, admin)
    pair = f"{made['id']}:{made['client_secret']}"
    basic = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    log(f"client_credentials with a secret, {CLIENTS} clients, {seconds:g} s")
    by_secret = await token_rate(base, lambda i: {"grant_type": "client_credentials"}, basic, seconds)

    key = ed25519.Ed25519PrivateKey.generate()
    public = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    public.update(kid="bench", alg="EdDSA", use="sig")
    body = {"name": f"bench-jwt-{run}", "scopes": ["todos"], "auth_method": "private_key_jwt",
            "jwks": {"keys": [public]}}
    signed = await _post_json(base, "/admin/clients", body, admin)
    # Enough for this machine's rate several times over; the token endpoint is the audience.
    assertions = _assertions(signed["id"], key, "bench", f"{base}/auth/token", 4000 + int(3000 * seconds))
    log(f"client_credentials with private_key_jwt ({len(assertions)} assertions made), {seconds:g} s")
    jwt_type = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    by_assertion = await token_rate(
        base,
        lambda i: {"grant_type": "client_credentials", "client_assertion_type": jwt_type,
                   "client_assertion": assertions[i % len(assertions)]},
        {},
        seconds,
    )

    users = list(emails[:-1])
    keys = {}
    for email in users:
        answer = await _post_json(base, "/users/me/api-keys", {"name": f"bench-{run}", "scopes": ["profile"]},
                                  tokens[email])
        keys[email] = answer["key"]
    log(f"GET /users/me by API key and by access token, {len(users)} users, {seconds:g} s each")
    reads = await compare({
        "access_token": (base, [("/users/me", tokens[e]) for e in users]),
        "api_key": (base, [("/users/me", keys[e]) for e in users]),
    })
    return {"client_secret": by_secret, "private_key_jwt": by_assertion, "reads": reads}


def rows(r: dict[str, Any], row: Callable[..., Any], workers: int) -> list[Any]:
    """perf.Row lines of this section."""
    w = f"[{workers}w]"
    reads = r["reads"]
    token_rps = reads["access_token"]["requests_per_second"]
    key_rps = reads["api_key"]["requests_per_second"]
    out = []
    for kind in ("client_secret", "private_key_jwt"):
        rate = r[kind]
        out.append(row(f"{w} client_credentials tokens/s, {kind} ({rate['clients']} clients)",
                       rate["tokens_per_second"], token_rps, "/users/me req/s", "pct"))
        others = sum(n for status, n in rate["answers"].items() if status != "200")
        out.append(row(f"{w}   same, answers other than 200", others, target="0", met=others == 0))
    out.append(row(f"{w} GET /users/me req/s by API key", key_rps, token_rps, "access token", "times",
                   f">= {1 / API_KEY_TARGET:.2f}x", key_rps >= token_rps / API_KEY_TARGET))
    out.append(row(f"{w} GET /users/me p50 ms by API key", reads["api_key"]["p50_ms"],
                   reads["access_token"]["p50_ms"], "access token", "times", f"<= {API_KEY_TARGET:.2f}x",
                   reads["api_key"]["p50_ms"] <= API_KEY_TARGET * reads["access_token"]["p50_ms"]))
    return out
