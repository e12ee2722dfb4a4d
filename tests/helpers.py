"""Small helpers shared by the test modules."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

PASSWORD = "correct horse battery staple"


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
