"""Brute-force flood: 64 clients on one address guess one account's password.

    python -m bench.flood [--seconds 60] [--clients 64] [--database-url URL]

The attacker connects from 127.0.0.2, the owner from 127.0.0.1 (both loopback). Reports the
attacker's checked guesses per minute, the answers by status, the owner's logins during the
flood, and the p99 of the owner's authenticated reads with and without the flood. Settings
are authsvc's defaults (bcrypt cost 12) unless given in the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
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


async def _attacker(base: str, seconds: float, statuses: Counter[int]) -> None:
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        deadline = time.monotonic() + seconds
        guess = 0
        while time.monotonic() < deadline:
            guess += 1
            body = {"username": EMAIL, "password": f"guess-{id(statuses)}-{guess}"}
            async with http.post(base + "/auth", json=body) as resp:
                await resp.read()
                statuses[resp.status] += 1


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--database-url", help="a PostgreSQL to use instead of an embedded one")
    parser.add_argument("--json", type=Path, default=Path("bench-flood.json"))
    args = parser.parse_args()
    result = asyncio.run(run(args.seconds, args.clients, args.database_url))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
