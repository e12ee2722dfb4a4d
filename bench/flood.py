"""Floods: 64 clients on one address guess one account's password, or 32 clients sign up.

    python -m bench.flood [--kind guesses|signups] [--seconds 60] [--clients N] [--database-url URL]

guesses (64 clients by default): the attacker connects from 127.0.0.2, the owner from
127.0.0.1 (both loopback). Reports the attacker's checked guesses per minute, the answers by
status, the owner's logins during the flood, and the p99 of the owner's authenticated reads
with and without the flood.

signups (32 clients by default): each client signs up new accounts as fast as it can from an
address of its own (127.0.1.1, 127.0.1.2, ...), so the per-address signup budget does not
stop them and every admitted signup costs a bcrypt hash; the owner logs in from 127.0.0.1
every 200 ms. Reports the signups' answers and the owner's login p50/p99 quiet (before the
flood, same pacing) and during it. Target: the p99 during at most 3x the quiet one.

Settings are authsvc's defaults (bcrypt cost 12) unless given in the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp

from .server import authsvc, percentile

EMAIL = "owner@example.com"
PASSWORD = "the owner's own long passphrase"


async def _read_latencies(http: aiohttp.ClientSession, base: str, token: str, seconds: float) -> list[float]:
    latencies = []
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        async with http.get(base + "/users/me", headers=headers) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.02)
    return latencies


async def _owner_logins(http: aiohttp.ClientSession, base: str, seconds: float) -> Counter[int]:
    outcomes: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        async with http.post(base + "/auth", json={"username": EMAIL, "password": PASSWORD}) as resp:
            outcomes[resp.status] += 1
        await asyncio.sleep(2)
    return outcomes


async def _flooder(base: str, local_ip: str, path: str, body: Callable[[int], dict[str, str]], seconds: float,
                   statuses: Counter[int]) -> None:
    """One client posting `body(i)` to `path` back to back from `local_ip` until time is up."""
    connector = aiohttp.TCPConnector(local_addr=(local_ip, 0), limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            i += 1
            async with http.post(base + path, json=body(i)) as resp:
                await resp.read()
                statuses[resp.status] += 1


async def _attacker(base: str, seconds: float, statuses: Counter[int]) -> None:
    def guess(i: int) -> dict[str, str]:
        return {"username": EMAIL, "password": f"guess-{id(statuses)}-{i}"}

    await _flooder(base, "127.0.0.2", "/auth", guess, seconds, statuses)


def _attack_process(base: str, seconds: float, clients: int) -> Counter[int]:
    """The attackers in a process of their own, so their load does not delay the owner's client."""

    async def attack() -> Counter[int]:
        statuses: Counter[int] = Counter()
        await asyncio.gather(*(_attacker(base, seconds, statuses) for _ in range(clients)))
        return statuses

    return asyncio.run(attack())


async def run(seconds: float, clients: int, database_url: str | None) -> dict[str, object]:
    async with authsvc(database_url) as base, aiohttp.ClientSession() as http:
        async with http.post(base + "/users", json={"email": EMAIL, "password": PASSWORD}) as resp:
            assert resp.status == 201, await resp.text()
        async with http.post(base + "/auth", json={"username": EMAIL, "password": PASSWORD}) as resp:
            token = (await resp.json())["access_token"]

        quiet = await _read_latencies(http, base, token, min(10.0, seconds))

        started = time.monotonic()
        with ProcessPoolExecutor(1) as pool:
            attack = asyncio.get_running_loop().run_in_executor(pool, _attack_process, base, seconds, clients)
            reads, owner = await asyncio.gather(
                _read_latencies(http, base, token, seconds), _owner_logins(http, base, seconds)
            )
            statuses = await attack
        elapsed = time.monotonic() - started

    checked = statuses[401]  # a 401 is a guess whose password was checked; 429s never were
    return {
        "seconds": round(elapsed, 1),
        "attacker_clients": clients,
        "attacker_answers": {str(k): v for k, v in sorted(statuses.items())},
        "attacker_checked_guesses_per_minute": round(checked / elapsed * 60, 1),
        "owner_logins": {str(k): v for k, v in sorted(owner.items())},
        "owner_read_p50_ms_quiet": round(percentile(quiet, 50) * 1000, 2),
        "owner_read_p99_ms_quiet": round(percentile(quiet, 99) * 1000, 2),
        "owner_read_p50_ms_flood": round(percentile(reads, 50) * 1000, 2),
        "owner_read_p99_ms_flood": round(percentile(reads, 99) * 1000, 2),
    }


async def _login_latencies(http: aiohttp.ClientSession, base: str, seconds: float) -> tuple[list[float], Counter[int]]:
    latencies: list[float] = []
    outcomes: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        async with http.post(base + "/auth", json={"username": EMAIL, "password": PASSWORD}) as resp:
            await resp.read()
            outcomes[resp.status] += 1
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.2)
    return latencies, outcomes


async def _signer(base: str, n: int, seconds: float, statuses: Counter[int]) -> None:
    def account(i: int) -> dict[str, str]:
        return {"email": f"flood-{n}-{i}-{id(statuses)}@example.com", "password": PASSWORD}

    await _flooder(base, f"127.0.1.{n + 1}", "/users", account, seconds, statuses)


def _signup_process(base: str, seconds: float, clients: int) -> Counter[int]:
    async def flood() -> Counter[int]:
        statuses: Counter[int] = Counter()
        await asyncio.gather(*(_signer(base, n, seconds, statuses) for n in range(clients)))
        return statuses

    return asyncio.run(flood())


async def run_signups(seconds: float, clients: int, database_url: str | None) -> dict[str, object]:
    async with authsvc(database_url) as base, aiohttp.ClientSession() as http:
        async with http.post(base + "/users", json={"email": EMAIL, "password": PASSWORD}) as resp:
            assert resp.status == 201, await resp.text()
        quiet, quiet_outcomes = await _login_latencies(http, base, min(20.0, seconds))
        started = time.monotonic()
        with ProcessPoolExecutor(1) as pool:
            flood = asyncio.get_running_loop().run_in_executor(pool, _signup_process, base, seconds, clients)
            during, outcomes = await _login_latencies(http, base, seconds)
            statuses = await flood
        elapsed = time.monotonic() - started
    p99_quiet, p99_flood = percentile(quiet, 99), percentile(during, 99)
    return {
        "seconds": round(elapsed, 1),
        "signup_clients": clients,
        "signup_answers": {str(k): v for k, v in sorted(statuses.items())},
        "owner_logins_quiet": {str(k): v for k, v in sorted(quiet_outcomes.items())},
        "owner_logins_flood": {str(k): v for k, v in sorted(outcomes.items())},
        "owner_login_p50_ms_quiet": round(percentile(quiet, 50) * 1000, 1),
        "owner_login_p99_ms_quiet": round(p99_quiet * 1000, 1),
        "owner_login_p50_ms_flood": round(percentile(during, 50) * 1000, 1),
        "owner_login_p99_ms_flood": round(p99_flood * 1000, 1),
        "owner_login_p99_flood_over_quiet": round(p99_flood / p99_quiet, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("guesses", "signups"), default="guesses")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, help="64 guessing, 32 signing up")
    parser.add_argument("--database-url", help="a PostgreSQL to use instead of an embedded one")
    parser.add_argument("--json", type=Path, help="bench-flood.json (guesses), bench-flood-signups.json")
    args = parser.parse_args()
    if args.kind == "signups":
        result = asyncio.run(run_signups(args.seconds, args.clients or 32, args.database_url))
    else:
        result = asyncio.run(run(args.seconds, args.clients or 64, args.database_url))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    args.json = args.json or Path("bench-flood.json" if args.kind == "guesses" else "bench-flood-signups.json")
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
