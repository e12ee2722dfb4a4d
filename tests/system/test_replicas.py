"""Two authsvc instances on one database behave as one.

Two real `authsvc serve --workers 1` processes on different loopback ports share the run's
database, as replicas behind a load balancer would. Everything a request may depend on
(users, sessions, refresh tokens, the login budgets) must be in PostgreSQL: whatever one
instance did, the other sees at once.
"""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from helpers import PASSWORD
from servers import COMMAND, free_port, server_env, server_log

from authsvc.settings import Settings

# The two instances believe X-Forwarded-For from loopback, as behind the compose proxy, so
# one test can play several client addresses.
SETTINGS = {
    "AUTHSVC_BCRYPT_ROUNDS": "4",
    "AUTHSVC_HASH_WORKERS": "1",
    "AUTHSVC_DB_POOL_MIN": "1",
    "AUTHSVC_DB_POOL_MAX": "4",
    "AUTHSVC_MIGRATE_ON_START": "false",  # like the compose replicas: the run migrated already
    "AUTHSVC_TRUSTED_PROXIES": "127.0.0.1/32",
    # A pair's backoff long enough to be sure it is still running when the other instance is
    # asked; the 401 that starts it is not delayed (no sleepers), so the test stays fast.
    "AUTHSVC_LOGIN_BACKOFF_BASE_MS": "60000",
    "AUTHSVC_LOGIN_BACKOFF_MAX_MS": "60000",
    "AUTHSVC_MAX_SLEEPING": "0",
    # A burst of 2 failures per account (a fifth of the hourly limit), then 429.
    "AUTHSVC_ACCOUNT_MAX_FAILURES_PER_HOUR": "10",
    "AUTHSVC_REFRESH_REUSE_GRACE": "0",
    "AUTHSVC_LOG_LEVEL": "WARNING",
}


def _start(cwd: Path, name: str, settings: dict[str, str]) -> tuple[str, subprocess.Popen[bytes], Path]:
    port = free_port()
    log = server_log(cwd / f"{name}.log", settings)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*COMMAND, "serve", "--workers", "1", "--port", str(port)],
            cwd=cwd,
            env=server_env(**settings),
            stdout=out,
            stderr=out,
        )
    return f"http://127.0.0.1:{port}", proc, log


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"authsvc exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    pytest.fail(f"authsvc at {base} did not become ready in 30 s")


@pytest.fixture(scope="module")
def pair(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The base URLs of instances A and B."""
    cwd = tmp_path_factory.mktemp("replicas")
    assert base_settings.password_pepper is not None and base_settings.signing_keys_file is not None
    settings = {
        **SETTINGS,
        "AUTHSVC_DATABASE_URL": str(base_settings.database_url),
        "AUTHSVC_PASSWORD_PEPPER": base_settings.password_pepper,
        "AUTHSVC_SIGNING_KEYS_FILE": str(base_settings.signing_keys_file),
        "AUTHSVC_DATA_DIR": str(cwd / "data"),
    }
    started = [_start(cwd, name, settings) for name in ("a", "b")]  # both boot at once
    try:
        for base, proc, log in started:
            _wait_ready(base, proc, log)
        yield started[0][0], started[1][0]
    finally:
        for _, proc, _ in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, log in started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for _, proc, log in started:
            out = log.read_text()
            assert proc.returncode == 0, out
            assert "Traceback" not in out and PASSWORD not in out


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _signup(http: aiohttp.ClientSession, base: str, email: str) -> None:
    async with http.post(base + "/users", json={"email": email, "password": PASSWORD}) as resp:
        assert resp.status == 201, await resp.text()


async def _login(
    http: aiohttp.ClientSession, base: str, email: str, password: str = PASSWORD, address: str = "192.0.2.1"
) -> tuple[int, dict]:
    body = {"username": email, "password": password}
    async with http.post(base + "/auth", json=body, headers={"X-Forwarded-For": address}) as resp:
        return resp.status, await resp.json()


async def _me(http: aiohttp.ClientSession, base: str, token: str) -> int:
    async with http.get(base + "/users/me", headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status


async def _refresh(http: aiohttp.ClientSession, base: str, refresh_token: str) -> tuple[int, dict]:
    async with http.post(base + "/auth/refresh", json={"refresh_token": refresh_token}) as resp:
        return resp.status, await resp.json()


async def test_a_user_signed_up_on_one_logs_in_on_the_other(pair, http):
    a, b = pair
    await _signup(http, a, "ab@example.com")
    status, _ = await _login(http, b, "ab@example.com")
    assert status == 200
    # And the email is taken on both: the unique index is the only arbiter.
    async with http.post(b + "/users", json={"email": "AB@example.com", "password": PASSWORD}) as resp:
        assert resp.status == 409


async def test_tokens_work_on_either_and_logout_on_one_ends_them_on_both(pair, http):
    a, b = pair
    await _signup(http, a, "tokens@example.com")
    _, from_a = await _login(http, a, "tokens@example.com")
    _, from_b = await _login(http, b, "tokens@example.com")
    for token in (from_a["access_token"], from_b["access_token"]):
        assert await _me(http, a, token) == 200
        assert await _me(http, b, token) == 200  # B has now seen (and remembers) A's token verified
    async with http.post(a + "/auth/logout", headers={"Authorization": f"Bearer {from_a['access_token']}"}) as resp:
        assert resp.status == 204
    assert await _me(http, b, from_a["access_token"]) == 401  # at once, not when the token expires
    assert await _me(http, a, from_a["access_token"]) == 401
    assert await _me(http, b, from_b["access_token"]) == 200  # only that session ended
    status, _ = await _refresh(http, b, from_a["refresh_token"])
    assert status == 400


async def test_a_pair_backoff_started_on_one_is_enforced_by_the_other(pair, http):
    a, b = pair
    await _signup(http, a, "pair@example.com")
    status, body = await _login(http, a, "pair@example.com", "wrong password!", address="198.51.100.7")
    assert status == 401 and body["error"] == "invalid_credentials"
    # B has never seen this pair: only the database can tell it that A's backoff is running.
    status, body = await _login(http, b, "pair@example.com", address="198.51.100.7")
    assert status == 429 and body["error"] == "too_many_attempts"
    # Another address is a different pair and gets in (the account budget still has room).
    status, _ = await _login(http, b, "pair@example.com", address="198.51.100.8")
    assert status == 200


async def test_the_account_budget_counts_failures_on_both_together(pair, http):
    a, b = pair
    await _signup(http, a, "budget@example.com")
    # Each guess from a new address, so the pair backoff never applies: only the account
    # budget (a burst of 2 here) stands between the attacker and the next guess.
    assert (await _login(http, a, "budget@example.com", "wrong password!", address="203.0.113.1"))[0] == 401
    assert (await _login(http, b, "budget@example.com", "wrong password!", address="203.0.113.2"))[0] == 401
    for base, address in ((a, "203.0.113.3"), (b, "203.0.113.4")):
        status, body = await _login(http, base, "budget@example.com", "wrong password!", address=address)
        assert status == 429 and body["error"] == "too_many_attempts"


async def test_refresh_rotated_on_one_then_reused_on_the_other_is_caught(pair, http):
    a, b = pair
    await _signup(http, a, "rotate@example.com")
    _, first = await _login(http, a, "rotate@example.com")
    status, second = await _refresh(http, a, first["refresh_token"])
    assert status == 200
    status, body = await _refresh(http, b, first["refresh_token"])  # the used one, replayed elsewhere
    assert status == 400 and body["error"] == "invalid_grant"
    # Reuse is taken as theft: the whole session is revoked, on both instances.
    assert (await _refresh(http, a, second["refresh_token"]))[0] == 400
    assert await _me(http, a, second["access_token"]) == 401
    assert await _me(http, b, second["access_token"]) == 401
