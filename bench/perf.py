"""Performance benchmark: authsvc against references measured in the same run, on this machine.

    python -m bench.perf [--seconds 10] [--database-url URL] [--workers 1,2] [--soak-seconds 0]
                         [--json bench-perf.json] [--connections 64,16] [--client auto|wrk|aiohttp]
                         [--bcrypt-seconds S] [--only logins,reads,loop,memory]

For each worker count (`--workers 1,2`: `authsvc serve` with AUTHSVC_WORKERS=1, then 2) it
starts authsvc itself (bench/server.py: embedded PostgreSQL in a temporary data dir unless
--database-url is given; bcrypt cost 12, the default; login budgets raised out of the way,
though every login here uses the right password), signs up 50 users through the API, and
measures, each figure against a reference taken in the same run:

a. bcrypt: checks per second at cost 12 on all cores (a pool of one thread per core running
   bcrypt.checkpw in this process while authsvc idles): the machine's limit for logins.
b. logins: correct-password POST /auth from 4 clients per core, each with its own users (one
   attempt per account and address at a time is a login budget), counted over --seconds
   after a warm-up. Reference: (a). Target: at least 90%. Every login also writes its
   session row, its refresh token and its auth event.
b2. logins on one account: 8 clients logging in as the same user from the same address (a
   service whose workers share one credential), over --seconds after a warm-up. Reference:
   (a). Target: at least 90%, and no answer but 200 (no 429, no 5xx).
c. authenticated reads: GET /users/me (the 50 users' tokens in turn) and GET /todos (20
   todos of one user) at full load, at each of --connections keep-alive connections (64,
   then 16), requests/s, p50 and p99, for five targets started beside authsvc, each with the
   same worker count, the same database and authsvc's pool size:
   - authsvc, with its default settings (the access line included);
   - the tutorial reference, bench/tutorial.py: what the tutorials teach and users would
     pick instead, a bare aiohttp app that decodes an HS256 JWT (a shared secret; this
     bench makes its tokens) per request and runs one pooled query (the user by id; the
     user's first 20 todos), answering by web.json_response; no session check, no
     middleware. Target: authsvc's requests/s at least 1.3x its, and its p99 no worse;
   - the Ed25519 reference, bench/reference.py: a bare aiohttp app that decodes authsvc's
     own JWT the same way (an Ed25519 check on every request, which authsvc's token cache
     skips) and runs the very same SQL. Target: within 10% (requests/s at least 90%, p50
     and p99 at most 110% of its);
   - two ceilings, bench/ceilings.py, answering authsvc's own answer bytes: one pooled
     `select 1` per request (the least an answer from the database costs), and a constant
     answer with no database (what HTTP alone costs). No target: authsvc's figures are
     stated as a share of them.
   All five answer the same JSON (checked before measuring). After a warm-up of each, they
   take turns in short rounds, forwards then backwards (A B C D E E D C B A ...; 2 s each
   with wrk, half the window with aiohttp), about --seconds each in all, so that the shared
   machine's changes of speed weigh on all alike; p50/p99 are the request-weighted means of
   the rounds'. A verdict line per path and connection count says whether the tutorial
   target holds, with the ratios to the ceilings.
d. event loop never blocked: p99 of GET /users/me from one client every 10 ms while 8
   clients log in continuously. Reference: the same p99 without them. Target: at most 3x.
   The bare reference is probed the same way while the clients log in to authsvc: what it
   loses is the cost of sharing the cores with bcrypt, not a blocked loop.
e. scaling: a to d for every worker count, and the ratios between the first and the last.
f. memory: resident size (VmRSS) of each worker process (the spawned children of authsvc,
   or authsvc itself with one worker) after the run, against the bare reference's workers;
   with --soak-seconds N (the issue asks for 300), mixed load (reads of both kinds and 8
   clients logging in) for N seconds and each worker's RSS growth over it, from the start
   and, to tell a leak from the first settling to the mix, from a tenth of the way in
   (RSS is sampled every 10 s, all in the JSON). Target: 5%.

g. service identities (bench/identities.py): client_credentials tokens per second with a
   secret and with private_key_jwt, and GET /users/me by API key against the same by access
   token in alternating rounds. Target: an API-key request costs at most 1.2x.

`--only` runs some of these: logins (a, b, b2), reads (c), loop (d), memory (f), identities (g). With reads
alone (`--only reads`, the quick comparison) authsvc runs at bcrypt cost 4, which no read
touches, so seeding the users takes seconds.

Reads are driven by wrk when it is on PATH (Debian package `wrk`: one thread, which is
enough to saturate two cores of Python), otherwise by aiohttp clients in one process per
core; logins and the p99 probe always use aiohttp in this process (they are slow requests).
Every server runs on uvloop where it is installed (`pip install -e '.[bench]'`), authsvc
included. Client, servers and PostgreSQL share the machine: the figures are for the whole,
which is why each comes with its reference. Prints the tables and the verdicts, and writes
the details to --json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt

from authsvc.settings import Settings

from . import identities
from .reference import reference
from .server import Service, authsvc_service, bare_server, percentile, rss_kib
from .tutorial import token as tutorial_token

CORES = os.cpu_count() or 1
BCRYPT_ROUNDS = 12
USERS = 50
TODOS = 20
LOGIN_CLIENTS = 4 * CORES
BUSY_LOGIN_CLIENTS = 8
SHARED_LOGIN_CLIENTS = 8
PROBE_INTERVAL = 0.01
WARMUP = 2.0
LOGIN_WARMUP = 2.0
PASSWORD = "a benchmark user's passphrase"
READ_PATHS = ("/users/me", "/todos")
SECTIONS = ("logins", "reads", "loop", "memory", "identities")  # --only: a, b and b2; c; d; f; g
SETTINGS = {
    "AUTHSVC_BCRYPT_ROUNDS": str(BCRYPT_ROUNDS),
    # Budgets out of the way: the right password is always used, but each claim counts
    # against the address until it succeeds, and 8 clients claim at once.
    "AUTHSVC_ACCOUNT_MAX_FAILURES_PER_HOUR": "10000",
    "AUTHSVC_ADDRESS_MAX_FAILURES_PER_MINUTE": "100000",
    # The 50 users are signed up from one address.
    "AUTHSVC_SIGNUP_MAX_PER_HOUR": "100000",
    # Tokens taken at the start must outlive a long soak.
    "AUTHSVC_ACCESS_TOKEN_TTL": "86400",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- load generation for reads: wrk, or aiohttp processes ---


@dataclass
class Load:
    requests: int
    seconds: float
    errors: int  # non-200 answers, connection errors and timeouts
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "requests_per_second": round(self.rps, 1)}


@dataclass(frozen=True)
class Client:
    mode: str  # "wrk" or "aiohttp"
    connections: int

    def describe(self) -> str:
        """The load generator, without the connection count (that is --connections)."""
        if self.mode == "wrk":
            return f"wrk ({_wrk_version()}), 1 thread"
        return f"aiohttp, {CORES} processes sharing the connections"

    def round_seconds(self, seconds: float) -> float:
        """How long one round of a comparison lasts: wrk starts at once, aiohttp processes do not."""
        if self.mode == "wrk":
            return 2.0 if seconds >= 4 else 1.0
        return seconds / 2

    async def run(self, base: str, items: Sequence[tuple[str, str]], seconds: float) -> Load:
        """GET each (path, token) in turn from all connections for `seconds`."""
        if self.mode == "wrk":
            return await _wrk(base, items, seconds, self.connections)
        return await _aiohttp_load(base, items, seconds, self.connections)


def _wrk_version() -> str:
    import subprocess

    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).split("[")[0].strip() or "wrk"


WRK_SCRIPT = """
local items = { %s }
local reqs = {}
local n = 0
init = function(args)
  for i, item in ipairs(items) do
    reqs[i] = wrk.format("GET", item[1], { ["Authorization"] = "Bearer " .. item[2] })
  end
end
request = function()
  n = n %% #reqs + 1
  return reqs[n]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"errors\\": %%d, " ..
    "\\"p50_us\\": %%d, \\"p90_us\\": %%d, \\"p99_us\\": %%d}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


async def _wrk(base: str, items: Sequence[tuple[str, str]], seconds: float, connections: int) -> Load:
    entries = ", ".join(f'{{"{path}", "{token}"}}' for path, token in items)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="authsvc-perf-") as script:
        script.write(WRK_SCRIPT % entries)
        script.flush()
        args = ["-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s"]
        proc = await asyncio.create_subprocess_exec(
            "wrk", *args, "-s", script.name, base + items[0][0],
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
    for line in out.decode().splitlines():
        if line.startswith("WRKJSON "):
            r = json.loads(line[len("WRKJSON "):])
            return Load(
                r["requests"], r["duration_us"] / 1e6, r["errors"],
                r["p50_us"] / 1000, r["p90_us"] / 1000, r["p99_us"] / 1000,
            )
    raise RuntimeError(f"wrk gave no result:\n{out.decode()}\n{err.decode()}")


def _client_process(
    base: str, items: Sequence[tuple[str, str]], start_at: float, seconds: float, connections: int, first: int
) -> tuple[int, int, float, list[float]]:
    """One load process: `connections` closed-loop clients from wall-clock `start_at` on."""

    async def drive() -> tuple[int, int, float, list[float]]:
        latencies: list[float] = []
        errors = 0
        prepared = [(base + path, {"Authorization": f"Bearer {token}"}) for path, token in items]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            await asyncio.sleep(max(0.0, start_at - time.time()))
            began = time.monotonic()
            deadline = began + seconds

            async def one(k: int) -> None:
                nonlocal errors
                i = k
                while time.monotonic() < deadline:
                    url, headers = prepared[i % len(prepared)]
                    i += connections
                    started = time.perf_counter()
                    try:
                        async with http.get(url, headers=headers) as resp:
                            await resp.read()
                            ok = resp.status == 200
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        ok = False
                    latencies.append(time.perf_counter() - started)
                    errors += not ok

            await asyncio.gather(*(one(first + k) for k in range(connections)))
            return len(latencies), errors, time.monotonic() - began, latencies

    return asyncio.run(drive())


async def _aiohttp_load(base: str, items: Sequence[tuple[str, str]], seconds: float, connections: int) -> Load:
    per = math.ceil(connections / CORES)
    start_at = time.time() + 2.0  # every process up before any starts
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(CORES, mp_context=context) as pool:
        loop = asyncio.get_running_loop()
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(pool, _client_process, base, list(items), start_at, seconds, per, i * per)
                for i in range(CORES)
            )
        )
    latencies = [x for part in parts for x in part[3]]
    rps = sum(count / elapsed for count, _, elapsed, _ in parts)
    total = sum(count for count, *_ in parts)
    return Load(
        total, total / rps if rps else seconds, sum(errors for _, errors, _, _ in parts),
        percentile(latencies, 50) * 1000, percentile(latencies, 90) * 1000, percentile(latencies, 99) * 1000,
    )


def merge(loads: Sequence[Load]) -> Load:
    """Rounds into one: requests and time add up; percentiles are the request-weighted mean."""
    total = sum(x.requests for x in loads) or 1

    def mean(field: str) -> float:
        return sum(getattr(x, field) * x.requests for x in loads) / total

    return Load(
        sum(x.requests for x in loads), sum(x.seconds for x in loads), sum(x.errors for x in loads),
        mean("p50_ms"), mean("p90_ms"), mean("p99_ms"),
    )


def round_order(names: Sequence[str], count: int) -> list[str]:
    """The order of `count` rounds of each target: forwards, then backwards, and again
    (A B B A A B B A ... for two, A B C C B A ... for three), so that no target always runs
    just after another, or first, and a steady change of the machine's speed weighs on all
    alike. `count` is rounded up to an even number."""
    count += count % 2
    return [name for i in range(count) for name in (names if i % 2 == 0 else list(reversed(names)))]


async def compare_reads(
    client: Client, targets: dict[str, tuple[str, Sequence[tuple[str, str]]]], seconds: float
) -> dict[str, Any]:
    """Every target, {name: (base URL, [(path, token), ...])}, under the same load: after a
    warm-up of each, short rounds in `round_order`, about `seconds` for each in all, so that
    the shared machine's changes of speed weigh on all alike."""
    for base, items in targets.values():
        await client.run(base, items, WARMUP)
    length = client.round_seconds(seconds)
    count = max(2, math.ceil(seconds / length))
    rounds: dict[str, list[Load]] = {name: [] for name in targets}
    for name in round_order(list(targets), count):
        base, items = targets[name]
        rounds[name].append(await client.run(base, items, length))
    return {name: {**merge(loads).summary(), "rounds": [x.summary() for x in loads]} for name, loads in rounds.items()}


# --- the measurements ---


def bcrypt_reference(seconds: float, threads: int, rounds: int) -> dict[str, Any]:
    """bcrypt.checkpw per second on `threads` threads at `rounds` (what one login costs)."""
    password = base64.b64encode(secrets.token_bytes(48))  # 64 characters, like authsvc's pre-hash
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds))
    started = time.perf_counter()
    deadline = started + seconds

    def loop() -> tuple[int, float]:
        done = 0
        while True:
            assert bcrypt.checkpw(password, hashed)
            done += 1
            now = time.perf_counter()
            if now >= deadline:
                return done, now

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda _: loop(), range(threads)))
    checks = sum(n for n, _ in results)
    elapsed = max(end for _, end in results) - started
    return {"threads": threads, "rounds": rounds, "checks": checks, "seconds": round(elapsed, 2),
            "checks_per_second": checks / elapsed}


async def signup(base: str, emails: Sequence[str]) -> None:
    gate = asyncio.Semaphore(2 * CORES)
    async with aiohttp.ClientSession() as http:

        async def one(email: str) -> None:
            async with gate, http.post(base + "/users", json={"email": email, "password": PASSWORD}) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"signup of {email}: {resp.status} {await resp.text()}")

        await asyncio.gather(*(one(e) for e in emails))


@dataclass
class LoginRecord:
    at: float
    status: int
    email: str
    token: str | None


async def login_clients(base: str, emails: Sequence[str], clients: int, until: float) -> list[LoginRecord]:
    """`clients` clients logging in back to back until `until` (monotonic), each with its own users."""
    clients = min(clients, len(emails))
    groups = [emails[i::clients] for i in range(clients)]
    records: list[LoginRecord] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def client(group: Sequence[str]) -> None:
            i = 0
            while time.monotonic() < until:
                email = group[i % len(group)]
                i += 1
                async with http.post(base + "/auth", json={"username": email, "password": PASSWORD}) as resp:
                    token = (await resp.json())["access_token"] if resp.status == 200 else None
                    if token is None:
                        await resp.read()
                records.append(LoginRecord(time.monotonic(), resp.status, email, token))

        await asyncio.gather(*(client(g) for g in groups))
    return records


def _statuses(records: Sequence[LoginRecord]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(r.status for r in records).items())}


async def measure_logins(
    base: str, emails: Sequence[str], seconds: float, clients: int = LOGIN_CLIENTS
) -> tuple[dict[str, Any], dict[str, str]]:
    """Logins per second over `seconds` after a warm-up; also the newest token of every user."""
    began = time.monotonic()
    window = (began + LOGIN_WARMUP, began + LOGIN_WARMUP + seconds)
    records = await login_clients(base, emails, clients, window[1])
    counted = [r for r in records if window[0] <= r.at <= window[1]]
    ok = sum(r.status == 200 for r in counted)
    tokens = {r.email: r.token for r in records if r.token is not None}
    return {
        "clients": min(clients, len(emails)),
        "seconds": seconds,
        "logins": ok,
        "logins_per_second": ok / seconds,
        "answers_in_window": _statuses(counted),
        "answers_all": _statuses(records),
    }, tokens


async def login_missing(base: str, emails: Sequence[str], tokens: dict[str, str]) -> None:
    """Log in every user who has no token yet (a few at a time: each is one of its own)."""
    gate = asyncio.Semaphore(2 * CORES)
    async with aiohttp.ClientSession() as http:

        async def one(email: str) -> None:
            body = {"username": email, "password": PASSWORD}
            async with gate, http.post(base + "/auth", json=body) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"login of {email}: {resp.status} {await resp.text()}")
                tokens[email] = (await resp.json())["access_token"]

        await asyncio.gather(*(one(e) for e in dict.fromkeys(emails) if e not in tokens))


async def create_todos(base: str, token: str, count: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            body = {"text": f"todo number {i + 1} of the benchmark", "completed": i % 3 == 0}
            async with http.post(base + "/todos", json=body, headers=headers) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"todo: {resp.status} {await resp.text()}")


async def read_answers(base: str, token: str) -> dict[str, str]:
    """The texts of GET /users/me and GET /todos with this token."""
    headers = {"Authorization": f"Bearer {token}"}
    answers = {}
    async with aiohttp.ClientSession() as http:
        for path in READ_PATHS:
            async with http.get(base + path, headers=headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"{base}{path}: {resp.status} {await resp.text()}")
                answers[path] = await resp.text()
    return answers


async def same_answers(expected: dict[str, str], others: dict[str, tuple[str, str]]) -> None:
    """Every target, {name: (base URL, token)}, must answer what authsvc answers (`expected`,
    the same JSON documents), or the comparison means nothing."""
    if len(json.loads(expected["/todos"])) != TODOS:
        raise RuntimeError(f"/todos: {len(json.loads(expected['/todos']))} todos, expected {TODOS}")
    for name, (base, token) in others.items():
        answers = await read_answers(base, token)
        for path, text in expected.items():
            if json.loads(answers[path]) != json.loads(text):
                raise RuntimeError(f"{path}: {name} answers\n{answers[path]}\nbut authsvc\n{text}")


async def user_ids(base: str, tokens: dict[str, str]) -> dict[str, int]:
    """Each user's id, from authsvc's GET /users/me with the user's token."""
    async with aiohttp.ClientSession() as http:

        async def one(token: str) -> int:
            async with http.get(base + "/users/me", headers={"Authorization": f"Bearer {token}"}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"/users/me: {resp.status} {await resp.text()}")
                return (await resp.json())["id"]

        ids = await asyncio.gather(*(one(t) for t in tokens.values()))
    return dict(zip(tokens, ids, strict=True))


async def probe(base: str, token: str, seconds: float) -> list[float]:
    """Latencies of GET /users/me, one request every PROBE_INTERVAL on one connection."""
    latencies = []
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            async with http.get(base + "/users/me", headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"probe: {resp.status}")
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(PROBE_INTERVAL)
    return latencies


async def loop_blocking(
    base: str, bare_base: str, token: str, emails: Sequence[str], seconds: float
) -> dict[str, Any]:
    """p99 of /users/me alone and while clients log in to authsvc, for authsvc and the bare
    reference: if the bare one slows down as much, it is the shared cores, not a blocked loop."""
    quiet = await probe(base, token, seconds)
    bare_quiet = await probe(bare_base, token, seconds)
    began = time.monotonic()
    logins = asyncio.create_task(
        login_clients(base, emails, BUSY_LOGIN_CLIENTS, began + LOGIN_WARMUP + 2 * seconds)
    )
    await asyncio.sleep(LOGIN_WARMUP)  # every bcrypt thread busy before the probe starts
    window = time.monotonic()
    busy = await probe(base, token, seconds)
    bare_busy = await probe(bare_base, token, seconds)
    records = await logins
    during = [r for r in records if window <= r.at <= window + 2 * seconds]
    return {
        "probe_interval_ms": PROBE_INTERVAL * 1000,
        "quiet": _latency_summary(quiet),
        "during_logins": _latency_summary(busy),
        "bare_quiet": _latency_summary(bare_quiet),
        "bare_during_logins": _latency_summary(bare_busy),
        "login_clients": BUSY_LOGIN_CLIENTS,
        "logins_per_second_meanwhile": sum(r.status == 200 for r in during) / (2 * seconds),
        "login_answers": _statuses(records),
    }


def _latency_summary(latencies: Sequence[float]) -> dict[str, Any]:
    return {
        "samples": len(latencies),
        "p50_ms": percentile(list(latencies), 50) * 1000,
        "p99_ms": percentile(list(latencies), 99) * 1000,
        "max_ms": max(latencies) * 1000 if latencies else float("nan"),
    }


def rss_mib(service: Service) -> list[float]:
    return [rss_kib(pid) / 1024 for pid in service.worker_pids()]


async def soak(
    service: Service, client: Client, items: Sequence[tuple[str, str]], emails: Sequence[str], seconds: float
) -> dict[str, Any]:
    """Mixed load for `seconds`; each worker's RSS at the start, every 10 s and at the end."""
    pids = service.worker_pids()
    samples = [(0.0, [rss_kib(pid) / 1024 for pid in pids])]
    began = time.monotonic()
    reads = asyncio.create_task(client.run(service.base, items, seconds))
    logins = asyncio.create_task(login_clients(service.base, emails, BUSY_LOGIN_CLIENTS, began + seconds))
    while not reads.done():
        await asyncio.wait([reads], timeout=10)
        samples.append((round(time.monotonic() - began, 1), [rss_kib(pid) / 1024 for pid in pids]))
    load, records = await reads, await logins
    def growth(since: list[float]) -> list[float]:
        return [round((b - a) / a * 100, 2) for a, b in zip(since, samples[-1][1], strict=True)]

    settled = next((v for t, v in samples if t >= seconds / 10), samples[-1][1])  # after the first tenth
    return {
        "seconds": seconds,
        "reads": load.summary(),
        "logins": sum(r.status == 200 for r in records),
        "login_answers": _statuses(records),
        "rss_mib_samples": [{"t": t, "rss_mib": [round(x, 2) for x in v]} for t, v in samples],
        "rss_growth_percent": growth(samples[0][1]),
        "rss_growth_percent_after_first_tenth": growth(settled),
    }


# --- one worker count ---


def bcrypt_rounds(sections: frozenset[str]) -> int:
    """The default cost where logins are measured (or run beside what is); the least cost
    where only reads are, which a login's cost does not touch, so that seeding is quick."""
    return BCRYPT_ROUNDS if sections & {"logins", "loop", "memory"} else 4


async def measure_reads(
    service: Service, bare: Service, emails: Sequence[str], tokens: dict[str, str], args: argparse.Namespace,
    mode: str, tag: str,
) -> dict[str, Any]:
    """Section c: every read target started beside authsvc and the Ed25519 reference (same
    database, pool size and worker count), their answers checked equal, then each path at
    each connection count with all targets alternating. {connections: {path: {target: load}}}."""
    database_url = service.database_url()
    defaults = Settings()
    pool = ["--pool-min", str(defaults.db_pool_min), "--pool-max", str(defaults.db_pool_max)]
    secret = secrets.token_urlsafe(32)
    ids = await user_ids(service.base, {e: tokens[e] for e in emails})
    tutorial_tokens = {e: tutorial_token(secret, ids[e], ttl=86_400) for e in emails}
    expected = await read_answers(service.base, tokens[emails[0]])
    answers = json.dumps(expected)
    workers = service.workers
    async with (
        bare_server("bench.tutorial", ["--database-url", database_url, *pool], workers=workers,
                    files={"--secret-file": secret}, database_url=database_url) as tutorial,
        bare_server("bench.ceilings", ["--kind", "select1", "--database-url", database_url, *pool],
                    workers=workers, files={"--answers": answers}, database_url=database_url) as select1,
        bare_server("bench.ceilings", ["--kind", "constant"], workers=workers, files={"--answers": answers}) as constant,
    ):
        bases = {"authsvc": service.base, "tutorial": tutorial.base, "reference": bare.base,
                 "ceiling_select1": select1.base, "ceiling_constant": constant.base}
        tokens_of = {name: tutorial_tokens if name == "tutorial" else tokens for name in bases}
        await same_answers(expected, {name: (bases[name], tokens_of[name][emails[0]]) for name in bases})
        reads: dict[str, Any] = {}
        for connections in args.connections:
            client = Client(mode, connections)
            reads[str(connections)] = {}
            for path in READ_PATHS:
                users = emails if path == "/users/me" else emails[:1]  # /todos: the one user with 20
                targets = {name: (base, [(path, tokens_of[name][e]) for e in users]) for name, base in bases.items()}
                loads = await compare_reads(client, targets, args.seconds)
                reads[str(connections)][path] = loads
                for name, load in loads.items():
                    log(f"{tag}, {connections} connections: GET {path} {name}: {load['requests_per_second']:.0f} "
                        f"req/s, p50 {load['p50_ms']:.2f} ms, p99 {load['p99_ms']:.2f} ms, {load['errors']} errors")
    return reads


async def run_one(workers: int, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    seconds = args.seconds
    sections: frozenset[str] = args.only
    tag = f"{workers} worker{'s' if workers > 1 else ''}"
    rounds = bcrypt_rounds(sections)
    result: dict[str, Any] = {"workers": workers, "sections": sorted(sections), "bcrypt_rounds": rounds}
    run_id = secrets.token_hex(3)  # a shared --database-url keeps the users of earlier runs
    emails = [f"perf-{run_id}-{i:03d}@example.com" for i in range(USERS)]
    log(f"{tag}: starting authsvc")
    settings = {**SETTINGS, "AUTHSVC_BCRYPT_ROUNDS": str(rounds)}
    async with authsvc_service(args.database_url, workers=workers, **settings) as service:
        log(f"{tag}: authsvc at {service.base}, workers {service.worker_pids()}; signing up {USERS} users")
        await signup(service.base, emails)
        tokens: dict[str, str] = {}

        if "logins" in sections:
            log(f"{tag}: bcrypt reference ({CORES} threads, {args.bcrypt_seconds:g} s)")
            result["bcrypt"] = await asyncio.to_thread(bcrypt_reference, args.bcrypt_seconds, CORES, rounds)
            log(f"{tag}: {result['bcrypt']['checks_per_second']:.2f} bcrypt checks/s; logins for {seconds:g} s")
            result["logins"], tokens = await measure_logins(service.base, emails, seconds)
            log(f"{tag}: {result['logins']['logins_per_second']:.2f} logins/s {result['logins']['answers_all']}")
            log(f"{tag}: {SHARED_LOGIN_CLIENTS} clients logging in as one user for {seconds:g} s")
            result["shared_logins"], _ = await measure_logins(
                service.base, [emails[-1]] * SHARED_LOGIN_CLIENTS, seconds, SHARED_LOGIN_CLIENTS
            )
            shared = result["shared_logins"]
            log(f"{tag}: {shared['logins_per_second']:.2f} logins/s {shared['answers_all']}")
        await login_missing(service.base, emails, tokens)
        todo_token = tokens[emails[0]]
        await create_todos(service.base, todo_token, TODOS)

        if "identities" in sections:
            result["identities"] = await identities.measure(
                service.base, service.database_url(), emails, tokens, PASSWORD, seconds,
                lambda targets: compare_reads(Client(mode, args.connections[0]), targets, seconds),
                lambda message: log(f"{tag}: {message}"),
            )

        if sections & {"reads", "loop", "memory"}:
            async with aiohttp.ClientSession() as http, http.get(service.base + "/.well-known/jwks.json") as resp:
                jwks = await resp.json()
            defaults = Settings()
            options = {"leeway": defaults.token_leeway, "idle_seconds": defaults.session_idle_timeout,
                       "pool_min": defaults.db_pool_min, "pool_max": defaults.db_pool_max}
            async with reference(service.database_url(), jwks, workers, **options) as bare:
                if "reads" in sections:
                    result["reads"] = await measure_reads(service, bare, emails, tokens, args, mode, tag)
                if "loop" in sections:
                    log(f"{tag}: /users/me p99 alone, then during {BUSY_LOGIN_CLIENTS} clients' logins "
                        f"(authsvc and bare, {seconds:g} s each)")
                    result["loop"] = await loop_blocking(service.base, bare.base, tokens[emails[1]], emails, seconds)
                    loop = result["loop"]
                    log(f"{tag}: p99 {loop['quiet']['p99_ms']:.2f} ms alone, {loop['during_logins']['p99_ms']:.2f} "
                        f"ms during logins (bare: {loop['bare_quiet']['p99_ms']:.2f}, "
                        f"{loop['bare_during_logins']['p99_ms']:.2f})")
                if "memory" in sections:
                    result["rss_mib_reference"] = [round(x, 2) for x in rss_mib(bare)]

        if "memory" in sections:
            result["rss_mib"] = [round(x, 2) for x in rss_mib(service)]
            if args.soak_seconds > 0:
                log(f"{tag}: soak, {args.soak_seconds:g} s of reads and logins")
                mixed = [("/users/me", tokens[e]) for e in emails] + [("/todos", todo_token)] * USERS
                client = Client(mode, args.connections[0])
                result["soak"] = await soak(service, client, mixed, emails, args.soak_seconds)
                log(f"{tag}: RSS growth {result['soak']['rss_growth_percent']} %")
    return result


# --- the table ---


@dataclass
class Row:
    figure: str
    value: float | None
    reference: float | None = None
    reference_is: str = ""
    ratio_kind: str = ""  # "pct": value/reference in %, "times": value/reference as 1.5x
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.reference:
            return None
        return self.value / self.reference

    def cells(self) -> list[str]:
        ratio = self.ratio
        shown = "" if ratio is None else f"{ratio * 100:.0f}%" if self.ratio_kind == "pct" else f"{ratio:.2f}x"
        ref = "" if self.reference is None else _num(self.reference)
        if ref and self.reference_is:
            ref += f" ({self.reference_is})"
        met = "" if self.met is None else "yes" if self.met else "NO"
        return [self.figure, _num(self.value), ref, shown, self.target, met]


def _num(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def rows_for(r: dict[str, Any]) -> list[Row]:
    w = f"[{r['workers']}w]"
    rows = []
    if "logins" in r:
        bcrypt_rate = r["bcrypt"]["checks_per_second"]
        logins = r["logins"]["logins_per_second"]
        rows += [
            Row(f"{w} bcrypt checks/s (cost {r['bcrypt']['rounds']}, {CORES} threads)", bcrypt_rate),
            Row(f"{w} logins/s ({r['logins']['clients']} clients)", logins, bcrypt_rate, "bcrypt/s", "pct",
                ">= 90%", logins >= 0.9 * bcrypt_rate),
        ]
        shared = r["shared_logins"]
        shared_rate = shared["logins_per_second"]
        not_ok = sum(n for status, n in shared["answers_all"].items() if status != "200")
        rows.append(Row(f"{w} logins/s, {shared['clients']} clients on one account and address", shared_rate,
                        bcrypt_rate, "bcrypt/s", "pct", ">= 90%", shared_rate >= 0.9 * bcrypt_rate))
        rows.append(Row(f"{w}   same, answers other than 200", not_ok, target="0", met=not_ok == 0))
    for connections, paths in r.get("reads", {}).items():
        wc = f"[{r['workers']}w {connections}c]"
        for path, targets in paths.items():
            ours, tut, ref = targets["authsvc"], targets["tutorial"], targets["reference"]
            rps = ours["requests_per_second"]
            rows.append(Row(f"{wc} GET {path} req/s", rps, tut["requests_per_second"], "tutorial", "times",
                            f">= {TUTORIAL_TARGET:.2f}x", rps >= TUTORIAL_TARGET * tut["requests_per_second"]))
            rows.append(Row(f"{wc} GET {path} p99 ms", ours["p99_ms"], tut["p99_ms"], "tutorial", "times",
                            "<= 1.00x", ours["p99_ms"] <= tut["p99_ms"]))
            rows.append(Row(f"{wc} GET {path} req/s", rps, targets["ceiling_select1"]["requests_per_second"],
                            "one select 1", "pct"))
            rows.append(Row(f"{wc} GET {path} req/s", rps, ref["requests_per_second"], "Ed25519 ref", "pct",
                            ">= 90%", rps >= 0.9 * ref["requests_per_second"]))
            for p in ("p50", "p99"):
                rows.append(Row(f"{wc} GET {path} {p} ms", ours[f"{p}_ms"], ref[f"{p}_ms"], "Ed25519 ref", "pct",
                                "<= 110%", ours[f"{p}_ms"] <= 1.1 * ref[f"{p}_ms"]))
    if "identities" in r:
        rows += identities.rows(r["identities"], Row, r["workers"])
    if "loop" in r:
        loop = r["loop"]
        busy, quiet = loop["during_logins"]["p99_ms"], loop["quiet"]["p99_ms"]
        rows.append(Row(f"{w} GET /users/me p99 ms, {loop['login_clients']} clients logging in", busy, quiet,
                        "alone", "times", "<= 3x", busy <= 3 * quiet))
        rows.append(Row(f"{w}   same, bare reference (not ours: the shared cores)",
                        loop["bare_during_logins"]["p99_ms"], loop["bare_quiet"]["p99_ms"], "alone", "times"))
    if "rss_mib" in r:
        rss = r["rss_mib"]
        rows.append(Row(f"{w} RSS MiB per worker (largest of {len(rss)})", max(rss), max(r["rss_mib_reference"]),
                        "bare", "times"))
    if "soak" in r:
        soaked = r["soak"]
        for key, when in (("rss_growth_percent", "from its start"), ("rss_growth_percent_after_first_tenth",
                                                                      "after its first tenth")):
            growth = max(soaked[key])
            rows.append(Row(f"{w} RSS growth % over {soaked['seconds']:g} s soak, {when} (largest)", growth,
                            target="<= 5%", met=growth <= 5))
    return rows


def scaling_rows(first: dict[str, Any], last: dict[str, Any]) -> list[Row]:
    label = f"[{first['workers']}w->{last['workers']}w]"

    def gain(get: Any) -> float:
        return get(last) / get(first)

    rows = []
    if "logins" in first:
        rows.append(Row(f"{label} logins/s gain", gain(lambda r: r["logins"]["logins_per_second"]),
                        gain(lambda r: r["bcrypt"]["checks_per_second"]), "bcrypt gain", "pct"))
    for connections, paths in first.get("reads", {}).items():
        for path in paths:
            def rps(r: dict[str, Any], name: str, c: str = connections, p: str = path) -> float:
                return r["reads"][c][p][name]["requests_per_second"]

            rows.append(Row(f"{label} {connections}c GET {path} req/s gain", gain(lambda r, f=rps: f(r, "authsvc")),
                            gain(lambda r, f=rps: f(r, "reference")), "bare gain", "pct"))
    return rows


# --- reads: every target's figures, the ratios, the verdicts ---

TARGET_LABELS = {
    "authsvc": "authsvc",
    "tutorial": "tutorial reference (HS256, one query)",
    "reference": "Ed25519 reference (authsvc's SQL)",
    "ceiling_select1": "ceiling: one pooled select 1",
    "ceiling_constant": "ceiling: constant answer",
}
TUTORIAL_TARGET = 1.3  # authsvc's req/s at least this times the tutorial reference's


def _over(ours: dict[str, Any], other: dict[str, Any] | None, field: str) -> float | None:
    if other is None or not other.get(field):
        return None
    return ours[field] / other[field]


def read_verdict(workers: int, connections: str, path: str, targets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """authsvc's ratios to the other targets of one comparison, and whether the aim holds:
    req/s at least TUTORIAL_TARGET times the tutorial reference's, its p99 no worse, and
    every answer of authsvc a 200."""
    ours = targets["authsvc"]
    ratios = {
        "rps_over_tutorial": _over(ours, targets.get("tutorial"), "requests_per_second"),
        "p50_over_tutorial": _over(ours, targets.get("tutorial"), "p50_ms"),
        "p99_over_tutorial": _over(ours, targets.get("tutorial"), "p99_ms"),
        "rps_over_reference": _over(ours, targets.get("reference"), "requests_per_second"),
        "rps_over_ceiling_select1": _over(ours, targets.get("ceiling_select1"), "requests_per_second"),
        "rps_over_ceiling_constant": _over(ours, targets.get("ceiling_constant"), "requests_per_second"),
    }
    speed, p99 = ratios["rps_over_tutorial"], ratios["p99_over_tutorial"]
    met = speed is not None and p99 is not None and speed >= TUTORIAL_TARGET and p99 <= 1.0 and ours["errors"] == 0
    return {"workers": workers, "connections": int(connections), "path": path, **ratios,
            "errors": {name: t["errors"] for name, t in targets.items()}, "met": met}


def _x(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def verdict_line(v: dict[str, Any]) -> str:
    """One line a reader can act on, e.g. `[1w 64c] GET /todos: NOT MET: 0.42x the tutorial
    reference's req/s (target >= 1.30x), p99 1.35x its (target <= 1.00x); 0.31x the one-query
    ceiling, 0.12x the constant answer`."""
    line = (f"[{v['workers']}w {v['connections']}c] GET {v['path']}: {'met' if v['met'] else 'NOT MET'}: "
            f"{_x(v['rps_over_tutorial'])} the tutorial reference's req/s (target >= {TUTORIAL_TARGET:.2f}x), "
            f"p99 {_x(v['p99_over_tutorial'])} its (target <= 1.00x); "
            f"{_x(v['rps_over_ceiling_select1'])} the one-query ceiling, "
            f"{_x(v['rps_over_ceiling_constant'])} the constant answer")
    errors = {name: n for name, n in v["errors"].items() if n}
    if errors:
        line += "; errors: " + ", ".join(f"{name} {n}" for name, n in errors.items())
    return line


def read_lines(r: dict[str, Any]) -> list[list[str]]:
    """The reads table's lines for one run: every target's req/s, p50, p99 and errors, and
    authsvc's req/s over the target's."""
    lines = []
    for connections, paths in r.get("reads", {}).items():
        for path, targets in paths.items():
            ours = targets["authsvc"]
            for name, load in targets.items():
                ratio = "" if name == "authsvc" else _x(_over(ours, load, "requests_per_second"))
                lines.append([f"[{r['workers']}w {connections}c] GET {path}", TARGET_LABELS.get(name, name),
                              _num(load["requests_per_second"]), _num(load["p50_ms"]), _num(load["p99_ms"]),
                              str(load["errors"]), ratio])
    return lines


def print_lines(header: Sequence[str], lines: Sequence[Sequence[str]], right: Sequence[int]) -> None:
    cells = [list(header)] + [list(line) for line in lines]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    for i, line in enumerate(cells):
        padded = [c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(line, widths, strict=True))]
        print("  ".join(padded).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_table(rows: Sequence[Row]) -> None:
    print_lines(["figure", "value", "reference", "ratio", "target", "met?"], [row.cells() for row in rows], (1, 3))


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": CORES,
        "cpu": model,
        "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "event_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio (uvloop not installed)",
    }


def _counts(what: str, example: str, most: int) -> Any:
    def parse(text: str) -> list[int]:
        try:
            counts = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"a comma-separated list of {what}, e.g. {example}") from None
        if not counts or any(not 1 <= c <= most for c in counts):
            raise argparse.ArgumentTypeError(f"{what} from 1 to {most}")
        return counts

    return parse


def _sections(text: str) -> frozenset[str]:
    chosen = frozenset(x.strip() for x in text.split(",") if x.strip())
    unknown = chosen - set(SECTIONS)
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(SECTIONS)}")
    return chosen


async def run(args: argparse.Namespace) -> dict[str, Any]:
    mode = args.client if args.client != "auto" else "wrk" if shutil.which("wrk") else "aiohttp"
    if mode == "wrk" and not shutil.which("wrk"):
        raise SystemExit("perf: wrk is not on PATH (apt-get install wrk), use --client aiohttp")
    if not importlib.util.find_spec("uvloop"):
        log("uvloop is not installed (pip install -e '.[bench]'): every target runs on asyncio's loop")
    started = datetime.now(UTC)
    results = [await run_one(n, args, mode) for n in args.workers]
    rows = [row for r in results for row in rows_for(r)]
    if len(results) > 1:
        rows += scaling_rows(results[0], results[-1])
    verdicts = [read_verdict(r["workers"], c, path, targets)
                for r in results for c, paths in r.get("reads", {}).items() for path, targets in paths.items()]
    return {
        "date": started.isoformat(timespec="seconds"),
        "duration_seconds": round((datetime.now(UTC) - started).total_seconds()),
        "machine": machine(),
        "client": Client(mode, 0).describe(),
        "connections": args.connections,
        "logins_and_probe_client": "aiohttp in the benchmark process",
        "database": "given URL" if args.database_url else "embedded PostgreSQL",
        "seconds_per_window": args.seconds,
        "sections": sorted(args.only),
        "authsvc_settings": SETTINGS,
        "read_targets": TARGET_LABELS,
        "runs": results,
        "table": [{**asdict(row), "ratio": row.ratio} for row in rows],
        "verdicts": [{**v, "line": verdict_line(v)} for v in verdicts],
        "_rows": rows,
        "_reads": [line for r in results for line in read_lines(r)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measuring window")
    parser.add_argument("--database-url", help="a PostgreSQL to use instead of an embedded one")
    parser.add_argument("--workers", type=_counts("worker counts", "1,2", 256), default=[1, 2],
                        help="worker counts to measure (default 1,2)")
    parser.add_argument("--soak-seconds", type=float, default=0.0, help="mixed-load soak for RSS growth (0: skip)")
    parser.add_argument("--json", type=Path, default=Path("bench-perf.json"))
    parser.add_argument("--connections", type=_counts("connection counts", "64,16", 10_000), default=[64, 16],
                        help="read connections, each count measured in turn (default 64,16)")
    parser.add_argument("--client", choices=["auto", "wrk", "aiohttp"], default="auto",
                        help="read load generator (auto: wrk when on PATH)")
    parser.add_argument("--bcrypt-seconds", type=float, help="bcrypt reference window (default: --seconds)")
    parser.add_argument("--only", type=_sections, default=frozenset(SECTIONS),
                        help=f"sections to run, comma-separated, of {','.join(SECTIONS)} (default: all)")
    args = parser.parse_args()
    if args.bcrypt_seconds is None:
        args.bcrypt_seconds = args.seconds
    result = asyncio.run(run(args))
    rows, reads = result.pop("_rows"), result.pop("_reads")
    m = result["machine"]
    print(f"\nauthsvc performance, {result['date']}, {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
          f"{m['event_loop']}")
    print(f"reads: {result['client']}, {' then '.join(map(str, args.connections))} connections; logins and p99 "
          f"probe: {result['logins_and_probe_client']}; {result['database']}; {args.seconds:g} s windows\n")
    if rows:
        print_table(rows)
    if reads:
        print()
        print_lines(["read", "target", "req/s", "p50 ms", "p99 ms", "errors", "authsvc/this"], reads, (2, 3, 4, 5, 6))
        print(f"\nverdicts (authsvc >= {TUTORIAL_TARGET:.2f}x the tutorial reference's req/s, p99 no worse):")
        for v in result["verdicts"]:
            print("  " + v["line"])
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
