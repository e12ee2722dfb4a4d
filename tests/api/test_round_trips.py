"""Round trips to PostgreSQL per request, as PostgreSQL sees them (through a counting hop).

A request to /users/me or /todos is one round trip: the session check and the route's own
statement are one statement, and a connection goes back to the pool without a reset query.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import bearer, login, signup
from pgwire import RoundTrips

from authsvc.app import create_app
from authsvc.settings import Settings

REQUESTS = 10


@pytest.fixture
async def hop(database_url: str) -> AsyncIterator[RoundTrips]:
    trips = RoundTrips(database_url)
    yield trips
    await trips.close()


@pytest.fixture
async def counted(aiohttp_client: Any, base_settings: Settings, hop: RoundTrips) -> Any:
    if base_settings.db_pgbouncer:
        pytest.skip("through PgBouncer 1.18 statements are not cached, so each is two round trips (docs/operations.md)")
    url = await hop.start()
    # One pooled connection: every statement a request makes goes over it, in order.
    app = create_app(base_settings.replace(database_url=url, db_pool_min=1, db_pool_max=1))
    return await aiohttp_client(app)


async def _trips(hop: RoundTrips, send: Any) -> list[list[str]]:
    await send()  # statements prepared on this connection, caches warm
    await send()
    hop.reset()
    for _ in range(REQUESTS):
        resp = await send()
        assert resp.status < 300, await resp.text()
    return list(hop.trips)


# (method, path, body, round trips per request)
ROUTES = [
    ("GET", "/users/me", None, 1),
    ("GET", "/todos", None, 1),
    ("GET", "/todos?limit=5&completed=false", None, 1),
    ("GET", "/todos?after=5&limit=5", None, 1),
    ("GET", "/todos/{id}", None, 1),
    ("PATCH", "/todos/{id}", {"completed": True}, 1),
    ("PATCH", "/todos/{id}", {}, 1),
    ("PUT", "/todos/{id}", {"text": "again", "completed": False}, 1),
    ("POST", "/todos", {"text": "more"}, 1),
    ("DELETE", "/todos/{fresh}", None, 1),  # another todo each time
]


@pytest.mark.parametrize(("method", "path", "body", "per_request"), ROUTES, ids=[f"{m} {p}" for m, p, *_ in ROUTES])
async def test_round_trips_per_request(counted, hop, method, path, body, per_request):
    await signup(counted, "trips@example.com")
    headers = bearer(await login(counted, "trips@example.com"))
    ids = []
    for n in range(20):
        resp = await counted.post("/todos", json={"text": f"todo {n}"}, headers=headers)
        assert resp.status == 201
        ids.append((await resp.json())["id"])
    todo_id = ids.pop()

    async def send() -> Any:
        url = path.format(id=todo_id, fresh=ids.pop() if "{fresh}" in path else None)
        return await counted.request(method, url, json=body, headers=headers)

    trips = await _trips(hop, send)
    assert len(trips) == REQUESTS * per_request, "\n".join(" | ".join(" ".join(s.split()) for s in t) for t in trips)
    assert not [t for t in trips if any("pg_advisory_unlock_all" in s for s in t)], "a reset query on release"


# An API key is resolved (key and owner in one statement), then a todo route's statement
# checks it again with its work: two round trips; and no write of its last use per request.
KEY_ROUTES = [("GET", "/users/me", 1), ("GET", "/todos", 2), ("POST", "/todos", 2)]


@pytest.mark.parametrize(("method", "path", "per_request"), KEY_ROUTES, ids=[f"{m} {p}" for m, p, _ in KEY_ROUTES])
async def test_round_trips_per_api_key_request(counted, hop, method, path, per_request):
    await signup(counted, "trips@example.com")
    session = bearer(await login(counted, "trips@example.com"))
    made = await counted.post("/users/me/api-keys", json={"name": "n", "scopes": ["profile", "todos"]}, headers=session)
    headers = bearer((await made.json())["key"])

    async def send() -> Any:
        return await counted.request(method, path, json={"text": "t"} if method == "POST" else None, headers=headers)

    trips = await _trips(hop, send)
    assert len(trips) == REQUESTS * per_request, "\n".join(" | ".join(" ".join(s.split()) for s in t) for t in trips)
    assert not [t for t in trips if any("UPDATE api_keys" in s for s in t)]
