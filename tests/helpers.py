"""Small helpers shared by the test modules."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import aiohttp
from aiohttp.test_utils import TestClient

PASSWORD = "correct horse battery staple"


def operator_env(settings: Any, data_dir: Any, **extra: str) -> dict[str, str]:
    """What an operator's shell would hold: the service's database, pepper and bcrypt cost."""
    assert settings.database_url and settings.password_pepper
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    env.update(
        AUTHSVC_DATABASE_URL=settings.database_url,
        AUTHSVC_PASSWORD_PEPPER=settings.password_pepper,
        AUTHSVC_BCRYPT_ROUNDS=str(settings.bcrypt_rounds),
        AUTHSVC_DATA_DIR=str(data_dir),
    )
    if settings.db_pgbouncer:  # AUTHSVC_TEST_PGBOUNCER: the commands go through it too
        env.update(AUTHSVC_DB_PGBOUNCER="true", AUTHSVC_MIGRATE_DATABASE_URL=str(settings.migrate_url))
    env.update(extra)
    return env

# The password policy's test data: the common passwords, and an account whose own
# words (email, local part, names) must be refused for it (see test_password_rule.py).
COMMON = ["password", "12345678", "qwertyuiop", "Password1"]
POLICY_EMAIL = "grace.hopper@example.com"
FIRST, LAST = "Ermengarde", "Quillfeather"
OWN_WORDS = [POLICY_EMAIL, "grace.hopper", FIRST, LAST, "Quillfeather1"]


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Waits until `condition()`: a test moves on at an event, not after a guessed sleep."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def signup(client: TestClient, email: str, password: str = PASSWORD, **extra: Any) -> dict[str, Any]:
    resp = await client.post("/users", json={"email": email, "password": password, **extra})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def login(client: TestClient, email: str, password: str = PASSWORD) -> str:
    resp = await client.post("/auth", json={"username": email, "password": password})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["access_token"]


async def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    """A JSON error with this status and code, and a message."""
    body = await resp.json()
    assert resp.status == status, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


# --- logins over real connections ---

Post = Callable[..., Awaitable[aiohttp.ClientResponse]]


class Answer(NamedTuple):
    status: int
    body: dict[str, Any]
    headers: Any


@contextlib.asynccontextmanager
async def source(client: TestClient, local_ip: str | None = None) -> AsyncIterator[Post]:
    """Post to the test server over real connections from a chosen loopback address, no pool limit."""
    connector = aiohttp.TCPConnector(limit=0, local_addr=(local_ip, 0) if local_ip else None)
    async with aiohttp.ClientSession(connector=connector) as session:

        def post(path: str, **kwargs: Any) -> Awaitable[aiohttp.ClientResponse]:
            return session.post(str(client.make_url(path)), **kwargs)

        yield post


async def attempt(
    post: Post, identifier: str, password: str, *, path: str = "/auth", forwarded_for: str | None = None
) -> Answer:
    """One login on /auth (JSON) or /auth/token (OAuth2 form)."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else None
    if path == "/auth":
        resp = await post("/auth", json={"username": identifier, "password": password}, headers=headers)
    else:
        form = {"grant_type": "password", "username": identifier, "password": password}
        resp = await post("/auth/token", data=form, headers=headers)
    body = await resp.json()
    resp.release()
    return Answer(resp.status, body, resp.headers)
