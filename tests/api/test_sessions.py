"""Sessions end to end: refresh rotation, reuse detection, timeouts, logout, introspection and revocation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import time
import uuid
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestClient
from helpers import PASSWORD, assert_error, bearer, signup

from authsvc.appkeys import TOKENS


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


EMAIL = "owner@example.com"
CLIENT_ID = "svc"
CLIENT_SECRET = secrets.token_urlsafe(40)
SERVICE = {"Authorization": basic(CLIENT_ID, CLIENT_SECRET)}
REFRESH_TOKEN = re.compile(r"rt_[A-Za-z0-9_-]{43,}\Z")  # 256 bits of base64url after the prefix


@pytest.fixture
def settings(base_settings: Any) -> Any:
    return base_settings.replace(introspection_clients=((CLIENT_ID, CLIENT_SECRET),), refresh_reuse_grace=10)


# --- helpers ---


def assert_not_cached(resp: Any) -> None:
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Pragma"] == "no-cache"


async def start_session(client: TestClient, email: str = EMAIL) -> dict[str, Any]:
    """Log in with POST /auth: a new session and its token pair."""
    resp = await client.post("/auth", json={"username": email, "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def refresh(client: TestClient, refresh_token: str) -> Any:
    return await client.post("/auth/refresh", json={"refresh_token": refresh_token})


async def refreshed(client: TestClient, refresh_token: str) -> dict[str, Any]:
    resp = await refresh(client, refresh_token)
    assert resp.status == 200, await resp.text()
    assert_not_cached(resp)
    return await resp.json()


async def assert_grant_refused(client: TestClient, refresh_token: str) -> None:
    await assert_error(await refresh(client, refresh_token), 400, "invalid_grant")


async def me_status(client: TestClient, access_token: str) -> int:
    resp = await client.get("/users/me", headers=bearer(access_token))
    if resp.status != 200:
        await assert_error(resp, 401, "invalid_token")
    return resp.status


def sid(access_token: str) -> uuid.UUID:
    return uuid.UUID(jwt.decode(access_token, options={"verify_signature": False})["sid"])


def digest(refresh_token: str) -> bytes:
    return hashlib.sha256(refresh_token.encode()).digest()


async def revoked_reason(db: asyncpg.Connection, session_id: uuid.UUID) -> str | None:
    row = await db.fetchrow("SELECT revoked_at, revoked_reason FROM sessions WHERE id = $1", session_id)
    assert row is not None
    assert (row["revoked_at"] is None) == (row["revoked_reason"] is None)
    return row["revoked_reason"]


async def introspect(client: TestClient, token: str, headers: dict[str, str] | None = None) -> Any:
    return await client.post("/auth/introspect", data={"token": token}, headers=SERVICE if headers is None else headers)


async def introspection(client: TestClient, token: str) -> dict[str, Any]:
    resp = await introspect(client, token)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    return await resp.json()


async def wait_for_lock_waiters(db: asyncpg.Connection, count: int) -> None:
    """Poll until `count` backends of this database wait on a lock (the requests reached FOR UPDATE)."""
    for _ in range(1000):
        waiting = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{count} requests never queued on the session row lock")


async def refresh_at_once(
    clients: list[TestClient], refresh_token: str, session_id: uuid.UUID, database_url: str, db: asyncpg.Connection
) -> list[tuple[int, dict[str, Any]]]:
    """Refresh through every client at the same moment: all queue on the session row, then go."""

    async def one(client: TestClient) -> tuple[int, dict[str, Any]]:
        resp = await refresh(client, refresh_token)
        return resp.status, await resp.json()

    holder = await asyncpg.connect(database_url)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session_id)
        tasks = [asyncio.ensure_future(one(client)) for client in clients]
        await wait_for_lock_waiters(db, len(clients))
        await tx.rollback()
        return list(await asyncio.gather(*tasks))
    finally:
        await holder.close()


@pytest.fixture
async def user(client: TestClient) -> dict[str, Any]:
    return await signup(client, EMAIL)


# --- 1. login hands out an opaque refresh token, stored only as a hash ---


@pytest.mark.parametrize("grant", ["json", "password_grant"])
async def test_login_returns_refresh_token_stored_only_as_its_sha256(client, user, db, grant):
    if grant == "json":
        resp = await client.post("/auth", json={"username": EMAIL, "password": PASSWORD})
    else:
        form = {"grant_type": "password", "username": EMAIL, "password": PASSWORD}
        resp = await client.post("/auth/token", data=form)
    assert resp.status == 200, await resp.text()
    assert_not_cached(resp)
    pair = await resp.json()
    token = pair["refresh_token"]
    assert REFRESH_TOKEN.match(token), token
    assert pair["token_type"] == "bearer" and pair["access_token"] and pair["expires_in"] > 0

    rows = await db.fetch("SELECT token_hash, session_id, used_at FROM refresh_tokens")
    stored = [(r["token_hash"], r["session_id"], r["used_at"]) for r in rows]
    assert stored == [(digest(token), sid(pair["access_token"]), None)]
    # The token, in any spelling a column could hold it, is nowhere in the database.
    tables = await db.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    assert {"sessions", "refresh_tokens", "users"} <= {t["table_name"] for t in tables}
    for table in tables:
        for row in await db.fetch(f'SELECT row_to_json(t)::text AS j FROM "{table["table_name"]}" t'):
            for needle in (token, token[3:], token.encode().hex()):
                assert needle not in row["j"], table["table_name"]


async def test_two_logins_get_distinct_refresh_tokens_and_sessions(client, user, db):
    first, second = await start_session(client), await start_session(client)
    assert first["refresh_token"] != second["refresh_token"]
    assert sid(first["access_token"]) != sid(second["access_token"])
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", user["id"]) == 2


# --- 2. rotation ---


@pytest.mark.parametrize("endpoint", ["/auth/refresh", "/auth/token"])
async def test_refresh_rotates_the_pair_and_uses_the_old_token_up(client, user, db, endpoint):
    pair = await start_session(client)
    if endpoint == "/auth/refresh":
        resp = await refresh(client, pair["refresh_token"])
    else:
        form = {"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]}
        resp = await client.post("/auth/token", data=form)
    assert resp.status == 200, await resp.text()
    assert_not_cached(resp)
    new = await resp.json()
    assert REFRESH_TOKEN.match(new["refresh_token"])
    assert new["refresh_token"] != pair["refresh_token"]
    assert new["access_token"] != pair["access_token"]
    assert sid(new["access_token"]) == sid(pair["access_token"])  # the same session goes on
    assert await me_status(client, new["access_token"]) == 200

    old = await db.fetchrow("SELECT used_at FROM refresh_tokens WHERE token_hash = $1", digest(pair["refresh_token"]))
    assert old["used_at"] is not None
    fresh = await db.fetchrow(
        "SELECT used_at, session_id FROM refresh_tokens WHERE token_hash = $1", digest(new["refresh_token"])
    )
    assert fresh["used_at"] is None and fresh["session_id"] == sid(pair["access_token"])
    # The new token rotates again.
    assert (await refreshed(client, new["refresh_token"]))["refresh_token"] != new["refresh_token"]


# --- 3. reuse detection ---


async def test_reuse_of_a_rotated_token_revokes_the_whole_session(make_client, user, db):
    strict = await make_client(refresh_reuse_grace=0)
    victim = await start_session(strict)
    bystander = await start_session(strict)
    rotated = await refreshed(strict, victim["refresh_token"])

    await assert_grant_refused(strict, victim["refresh_token"])  # the stolen, used-up token comes back

    assert await revoked_reason(db, sid(victim["access_token"])) == "refresh_token_reuse"
    await assert_grant_refused(strict, rotated["refresh_token"])  # the newest token dies with the session
    assert await me_status(strict, rotated["access_token"]) == 401
    assert await me_status(strict, victim["access_token"]) == 401
    # Another session of the same user goes on.
    assert await revoked_reason(db, sid(bystander["access_token"])) is None
    assert await me_status(strict, bystander["access_token"]) == 200
    assert await me_status(strict, (await refreshed(strict, bystander["refresh_token"]))["access_token"]) == 200


# --- 4. grace window ---


async def test_two_tabs_refreshing_at_once_both_get_working_pairs(client, user, db):
    pair = await start_session(client)
    first, second = await asyncio.gather(refresh(client, pair["refresh_token"]), refresh(client, pair["refresh_token"]))
    assert (first.status, second.status) == (200, 200), (await first.text(), await second.text())
    a, b = await first.json(), await second.json()
    assert a["refresh_token"] != b["refresh_token"] and a["access_token"] != b["access_token"]

    assert await revoked_reason(db, sid(pair["access_token"])) is None
    for new in (a, b):
        assert await me_status(client, new["access_token"]) == 200
    for new in (a, b):
        assert await me_status(client, (await refreshed(client, new["refresh_token"]))["access_token"]) == 200
    assert await revoked_reason(db, sid(pair["access_token"])) is None


async def test_reuse_after_the_grace_window_revokes_the_session(client, user, db):
    pair = await start_session(client)
    rotated = await refreshed(client, pair["refresh_token"])
    # Used 11 seconds ago: just outside the 10-second window.
    await db.execute(
        "UPDATE refresh_tokens SET used_at = now() - interval '11 seconds' WHERE token_hash = $1",
        digest(pair["refresh_token"]),
    )
    await assert_grant_refused(client, pair["refresh_token"])
    assert await revoked_reason(db, sid(pair["access_token"])) == "refresh_token_reuse"
    await assert_grant_refused(client, rotated["refresh_token"])
    assert await me_status(client, rotated["access_token"]) == 401


# --- 5. concurrent refreshes on two app instances ---


async def test_simultaneous_refresh_on_two_instances_without_grace_rotates_at_most_once(make_client, db, database_url):
    first, second = await make_client(refresh_reuse_grace=0), await make_client(refresh_reuse_grace=0)
    await signup(first, EMAIL)
    pair = await start_session(first)
    session_id = sid(pair["access_token"])

    outcomes = await refresh_at_once([first, second], pair["refresh_token"], session_id, database_url, db)

    # The session row lock makes one refresh see the other's rotation: with no grace that is reuse.
    statuses = sorted(status for status, _ in outcomes)
    assert statuses == [200, 400], outcomes
    winner = next(body for status, body in outcomes if status == 200)
    loser = next(body for status, body in outcomes if status == 400)
    assert loser["error"] == "invalid_grant"
    assert await revoked_reason(db, session_id) == "refresh_token_reuse"
    # Exactly one new token was minted, and it died with the session.
    rows = await db.fetch("SELECT token_hash, used_at FROM refresh_tokens WHERE session_id = $1", session_id)
    assert {r["token_hash"]: r["used_at"] is not None for r in rows} == {
        digest(pair["refresh_token"]): True,
        digest(winner["refresh_token"]): False,
    }
    await assert_grant_refused(second, winner["refresh_token"])
    assert await me_status(first, winner["access_token"]) == 401


async def test_simultaneous_refresh_on_two_instances_within_grace_gives_both_a_pair(make_client, db, database_url):
    first, second = await make_client(), await make_client()
    await signup(first, EMAIL)
    pair = await start_session(first)
    session_id = sid(pair["access_token"])

    outcomes = await refresh_at_once([first, second], pair["refresh_token"], session_id, database_url, db)

    assert [status for status, _ in outcomes] == [200, 200], outcomes
    tokens = {body["refresh_token"] for _, body in outcomes}
    assert len(tokens) == 2
    assert await revoked_reason(db, session_id) is None
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens WHERE session_id = $1", session_id) == 3
    for client, (_, body) in zip((second, first), outcomes, strict=True):
        assert await me_status(client, body["access_token"]) == 200
        await refreshed(client, body["refresh_token"])


# --- 6. idle timeout and absolute lifetime ---


async def test_idle_session_cannot_refresh_and_its_access_token_stops(client, user, db, settings):
    pair = await start_session(client)
    await db.execute(
        "UPDATE sessions SET last_used_at = now() - make_interval(secs => $2) WHERE id = $1",
        sid(pair["access_token"]),
        settings.session_idle_timeout + 60,
    )
    await assert_grant_refused(client, pair["refresh_token"])
    assert await me_status(client, pair["access_token"]) == 401


async def test_session_past_its_lifetime_cannot_refresh_and_its_access_token_stops(client, user, db):
    pair = await start_session(client)
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1", sid(pair["access_token"])
    )
    await assert_grant_refused(client, pair["refresh_token"])
    assert await me_status(client, pair["access_token"]) == 401


async def test_refresh_updates_last_used_at(client, user, db):
    pair = await start_session(client)
    session_id = sid(pair["access_token"])
    await db.execute("UPDATE sessions SET last_used_at = now() - interval '1 day' WHERE id = $1", session_id)
    before = await db.fetchval("SELECT now()")
    await refreshed(client, pair["refresh_token"])
    assert await db.fetchval("SELECT last_used_at FROM sessions WHERE id = $1", session_id) >= before


# --- 7. logout ---


async def test_logout_ends_only_the_current_session(client, user, db):
    current, other = await start_session(client), await start_session(client)
    resp = await client.post("/auth/logout", headers=bearer(current["access_token"]))
    assert resp.status == 204, await resp.text()

    assert await me_status(client, current["access_token"]) == 401  # at once, before the token expires
    await assert_grant_refused(client, current["refresh_token"])
    assert await revoked_reason(db, sid(current["access_token"])) == "logout"
    assert await me_status(client, other["access_token"]) == 200
    assert await me_status(client, (await refreshed(client, other["refresh_token"]))["access_token"]) == 200


# Every protected route, some with input it would refuse: an ended session is a 401 first,
# whether the route checks the session in its own statement (one round trip) or before it.
SOME_KEY = "0b6f3f5e-8d1c-4f5e-9a57-3c1d2e4f5a6b"
AFTER_LOGOUT = [
    ("GET", "/users/me", None),
    ("PATCH", "/users/me", {"first_name": "X"}),
    ("POST", "/users/me/password", {"current_password": PASSWORD, "new_password": "a whole new passphrase"}),
    ("DELETE", "/users/me", None),
    ("GET", "/todos", None),
    ("GET", "/todos?limit=0", None),
    ("GET", "/todos?completed=maybe", None),
    ("POST", "/todos", {"text": "x"}),
    ("GET", "/todos/{id}", None),
    ("GET", "/todos/not-an-id", None),
    ("GET", "/todos/999999", None),
    ("PATCH", "/todos/{id}", {"completed": True}),
    ("PUT", "/todos/{id}", {"text": "y", "completed": False}),
    ("DELETE", "/todos/{id}", None),
    ("POST", "/auth/logout", None),
    ("GET", "/admin/users", None),
    ("GET", "/admin/users/{id}", None),
    ("POST", "/admin/users/{id}/disable", None),
    ("POST", "/admin/users/{id}/enable", None),
    ("DELETE", "/admin/users/{id}", None),
    ("PUT", "/admin/users/{id}/roles", {"roles": ["user"]}),
    ("POST", "/users/me/api-keys", {"name": "x", "scopes": ["todos"]}),
    ("GET", "/users/me/api-keys", None),
    ("DELETE", f"/users/me/api-keys/{SOME_KEY}", None),
    ("GET", "/admin/users/{id}/api-keys", None),  # a scope the token lacks: still 401 first
    ("DELETE", f"/admin/users/{{id}}/api-keys/{SOME_KEY}", None),
    ("POST", "/admin/clients", {"name": "x", "scopes": []}),
    ("GET", "/admin/clients", None),
    ("POST", "/admin/clients/999999/secrets", None),
    ("POST", "/admin/clients/999999/secrets/retire", None),
    ("POST", "/admin/clients/999999/disable", None),
    ("POST", "/admin/clients/999999/enable", None),
    ("DELETE", "/admin/clients/999999", None),
]


@pytest.mark.parametrize(("method", "path", "body"), AFTER_LOGOUT, ids=[f"{m} {p}" for m, p, _ in AFTER_LOGOUT])
async def test_an_ended_session_is_refused_on_every_protected_route(client, user, db, method, path, body):
    pair = await start_session(client)
    token = pair["access_token"]
    resp = await client.post("/todos", json={"text": "kept"}, headers=bearer(token))
    todo_id = (await resp.json())["id"]
    resp = await client.post("/auth/logout", headers=bearer(token))
    assert resp.status == 204
    resp = await client.request(method, path.format(id=todo_id), json=body, headers=bearer(token))
    await assert_error(resp, 401, "invalid_token")
    assert await db.fetchval("SELECT text FROM todos WHERE id = $1", todo_id) == "kept"
    assert await db.fetchval("SELECT count(*) FROM users") == 1
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_logout_scope_all_ends_every_session(client, user, db):
    pairs = [await start_session(client) for _ in range(3)]
    resp = await client.post("/auth/logout?scope=all", headers=bearer(pairs[0]["access_token"]))
    assert resp.status == 204, await resp.text()
    for pair in pairs:
        assert await me_status(client, pair["access_token"]) == 401
        await assert_grant_refused(client, pair["refresh_token"])
        assert await revoked_reason(db, sid(pair["access_token"])) == "logout_all"


async def test_logout_with_an_unknown_scope_is_refused_and_ends_nothing(client, user, db):
    pair = await start_session(client)
    resp = await client.post("/auth/logout?scope=bogus", headers=bearer(pair["access_token"]))
    await assert_error(resp, 422, "validation_failed")
    assert await revoked_reason(db, sid(pair["access_token"])) is None
    assert await me_status(client, pair["access_token"]) == 200


async def test_logout_without_a_token_is_401(client, user, db):
    await start_session(client)
    await assert_error(await client.post("/auth/logout"), 401, "unauthorized")
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL") == 0


# --- 8. password change and account deletion ---


async def test_password_change_ends_the_other_sessions_only(client, user, db):
    current, other = await start_session(client), await start_session(client)
    resp = await client.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": "a brand new passphrase"},
        headers=bearer(current["access_token"]),
    )
    assert resp.status == 204, await resp.text()

    assert await me_status(client, other["access_token"]) == 401
    await assert_grant_refused(client, other["refresh_token"])
    assert await revoked_reason(db, sid(other["access_token"])) == "password_change"
    assert await revoked_reason(db, sid(current["access_token"])) is None
    assert await me_status(client, current["access_token"]) == 200
    assert await me_status(client, (await refreshed(client, current["refresh_token"]))["access_token"]) == 200


async def test_account_deletion_deletes_every_session(client, user, db):
    first, second = await start_session(client), await start_session(client)
    resp = await client.delete("/users/me", headers=bearer(first["access_token"]))
    assert resp.status == 204, await resp.text()

    assert await db.fetchval("SELECT count(*) FROM sessions") == 0
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens") == 0
    for pair in (first, second):
        await assert_grant_refused(client, pair["refresh_token"])
        assert await me_status(client, pair["access_token"]) == 401


# --- 9. introspection (RFC 7662) ---


async def test_introspection_of_a_live_access_token_gives_its_claims(client, user):
    pair = await start_session(client)
    body = await introspection(client, pair["access_token"])
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert body == {"active": True, "token_type": "access_token", **claims}
    assert set(claims) >= {"iss", "sub", "aud", "exp", "iat", "jti", "sid"}
    assert body["sub"] == str(user["id"])


async def test_introspection_of_a_live_refresh_token(client, user):
    pair = await start_session(client)
    body = await introspection(client, pair["refresh_token"])
    assert body["active"] is True
    assert body["token_type"] == "refresh_token"
    assert body["sub"] == str(user["id"])
    assert body["sid"] == str(sid(pair["access_token"]))
    assert body["exp"] > time.time()


async def test_introspection_says_inactive_for_dead_tokens(client, user, db):
    logged_out, expired_session, live = [await start_session(client) for _ in range(3)]
    assert (await client.post("/auth/logout", headers=bearer(logged_out["access_token"]))).status == 204
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1",
        sid(expired_session["access_token"]),
    )
    used_up = live["refresh_token"]
    await refreshed(client, used_up)
    # A well-signed token of a live session, but past its exp (beyond the leeway).
    key = client.app[TOKENS].keys.active
    claims = jwt.decode(live["access_token"], options={"verify_signature": False})
    expired_jwt = jwt.encode(
        {**claims, "iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600},
        key.private,
        algorithm=key.alg,
        headers={"typ": "at+jwt", "kid": key.kid},
    )
    dead = [
        logged_out["access_token"],
        logged_out["refresh_token"],
        expired_session["access_token"],
        expired_session["refresh_token"],
        expired_jwt,
        used_up,
        "garbage",
        "rt_" + "A" * 43,
    ]
    for token in dead:
        assert await introspection(client, token) == {"active": False}, token
    assert (await introspection(client, live["access_token"]))["active"] is True  # the control


@pytest.mark.parametrize(
    "authorization",
    [
        basic(CLIENT_ID, "wrong" + CLIENT_SECRET),
        basic("other", CLIENT_SECRET),
        None,
        "Bearer " + CLIENT_SECRET,
        "Basic not-base64!",
        basic(CLIENT_ID, ""),
    ],
    ids=["wrong_secret", "unknown_client", "no_authorization", "bearer", "bad_base64", "empty_secret"],
)
async def test_introspection_needs_a_service_credential(client, user, authorization):
    pair = await start_session(client)
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = await introspect(client, pair["access_token"], headers)
    await assert_error(resp, 401, "invalid_client")
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert "active" not in await resp.json()


async def test_introspection_without_configured_clients_needs_a_registered_one(make_client):
    # It was 404 here while only AUTHSVC_INTROSPECTION_CLIENTS could introspect; registered
    # clients (scope introspect) can now, so the endpoint is always there and asks who calls.
    plain = await make_client(introspection_clients=())
    await signup(plain, EMAIL)
    pair = await start_session(plain)
    resp = await introspect(plain, pair["access_token"])
    await assert_error(resp, 401, "invalid_client")
    assert resp.headers["WWW-Authenticate"].startswith("Basic")


# --- 10. revocation (RFC 7009) ---


async def test_revoking_a_refresh_token_ends_its_session(client, user, db):
    pair, other = await start_session(client), await start_session(client)
    resp = await client.post("/auth/revoke", data={"token": pair["refresh_token"]})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    assert await me_status(client, pair["access_token"]) == 401
    await assert_grant_refused(client, pair["refresh_token"])
    assert await revoked_reason(db, sid(pair["access_token"])) == "revoked"
    assert await me_status(client, other["access_token"]) == 200


async def test_revoking_an_access_token_ends_its_session(client, user, db):
    pair, other = await start_session(client), await start_session(client)
    resp = await client.post("/auth/revoke", data={"token": pair["access_token"]})
    assert resp.status == 200, await resp.text()
    assert await me_status(client, pair["access_token"]) == 401
    await assert_grant_refused(client, pair["refresh_token"])
    assert await me_status(client, other["access_token"]) == 200


@pytest.mark.parametrize("token", ["garbage", "rt_" + "B" * 43, "eyJhbGciOiJub25lIn0.e30."])
async def test_revoking_an_unknown_token_is_200_and_ends_nothing(client, user, db, token):
    pair = await start_session(client)
    resp = await client.post("/auth/revoke", data={"token": token})
    assert resp.status == 200, await resp.text()
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL") == 0
    assert await me_status(client, pair["access_token"]) == 200


async def test_revoke_without_a_token_or_with_json_is_invalid_request(client, user, db):
    pair = await start_session(client)
    resp = await client.post("/auth/revoke", data={"token_type_hint": "refresh_token"})
    await assert_error(resp, 400, "invalid_request")
    await assert_error(await client.post("/auth/revoke", json={"token": pair["refresh_token"]}), 400, "invalid_request")
    assert await revoked_reason(db, sid(pair["access_token"])) is None


# --- 11. bad input ---


@pytest.mark.parametrize(
    "body",
    [
        {"refresh_token": 12345},
        {"refresh_token": None},
        {"refresh_token": ["rt_x"]},
        {"refresh_token": {"token": "rt_x"}},
        {"refresh_token": ""},
        {"refresh_token": "rt_" + "A" * 40 + "\x00"},
        {"refresh_token": "rt_\ud800" + "A" * 43},
        {"refresh_token": "rt_" + "A" * 10_240},
        {},
    ],
    ids=["number", "null", "list", "object", "empty", "nul", "lone_surrogate", "10kb", "missing"],
)
async def test_refresh_with_a_malformed_body_is_422_and_changes_nothing(client, user, db, body):
    pair = await start_session(client)
    await assert_error(await client.post("/auth/refresh", json=body), 422, "validation_failed")
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens WHERE used_at IS NOT NULL") == 0
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL") == 0
    await refreshed(client, pair["refresh_token"])  # still the one live token


async def test_refresh_with_an_unknown_field_is_422_and_uses_nothing_up(client, user, db):
    pair = await start_session(client)
    resp = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"], "session": "x"})
    body = await assert_error(resp, 422, "validation_failed")
    assert "session" in body["details"]
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens WHERE used_at IS NOT NULL") == 0
    await refreshed(client, pair["refresh_token"])


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"", 400, "invalid_json"),
        (b"{", 400, "invalid_json"),
        (b'{"refresh_token": "rt_\xff"}', 400, "invalid_json"),
        (b"null", 422, "validation_failed"),
        (b"[]", 422, "validation_failed"),
        (b'"rt_x"', 422, "validation_failed"),
    ],
    ids=["empty", "truncated", "not_utf8", "null", "array", "string"],
)
async def test_refresh_with_a_body_that_is_not_a_json_object_is_a_json_error(client, user, raw, status, code):
    resp = await client.post("/auth/refresh", data=raw, headers={"Content-Type": "application/json"})
    await assert_error(resp, status, code)


@pytest.mark.parametrize(
    "token",
    ["rt_" + "A" * 43, "rt_" + "é" * 45, "not-a-refresh-token", "rt_short"],
    ids=["unknown", "non_ascii", "no_prefix", "too_short"],
)
async def test_refresh_with_a_well_typed_unknown_token_is_invalid_grant(client, user, db, token):
    await start_session(client)  # a live session exists: the unknown token still matches nothing
    await assert_grant_refused(client, token)
    resp = await client.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": token})
    await assert_error(resp, 400, "invalid_grant")
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens WHERE used_at IS NOT NULL") == 0


async def test_access_and_refresh_tokens_do_not_stand_in_for_each_other(client, user, db):
    pair = await start_session(client)
    assert await me_status(client, pair["refresh_token"]) == 401
    resp = await client.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": pair["access_token"]})
    await assert_error(resp, 400, "invalid_grant")
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens WHERE used_at IS NOT NULL") == 0


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "refresh_token"},
        {"grant_type": "refresh_token", "refresh_token": ""},
        {"grant_type": "refresh_token", "refresh_token": "rt_" + "A" * 40 + "\x00"},
        {"grant_type": "refresh_token", "refresh_token": "rt_" + "A" * 10_240},
        [("grant_type", "refresh_token"), ("refresh_token", "rt_" + "A" * 43), ("refresh_token", "rt_" + "B" * 43)],
    ],
    ids=["missing", "empty", "nul", "10kb", "repeated"],
)
async def test_token_endpoint_refresh_without_a_usable_token_is_invalid_request(client, user, db, form):
    pair = await start_session(client)
    resp = await client.post("/auth/token", data=form)
    await assert_error(resp, 400, "invalid_request")
    assert (await resp.json())["error_description"]
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens WHERE used_at IS NOT NULL") == 0
    await refreshed(client, pair["refresh_token"])


async def test_token_endpoint_refresh_as_json_is_invalid_request(client, user, db):
    pair = await start_session(client)
    body = {"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]}
    resp = await client.post("/auth/token", json=body)
    await assert_error(resp, 400, "invalid_request")
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens WHERE used_at IS NOT NULL") == 0



def test_every_protected_route_is_in_the_ended_session_test(app):
    listed = {
        (m, p.split("?")[0].replace("not-an-id", "{id}").replace("999999", "{id}").replace(SOME_KEY, "{key_id}"))
        for m, p, _ in AFTER_LOGOUT
    }
    protected = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method not in ("HEAD", "OPTIONS", "*") and not getattr(route.handler, "authsvc_public", False)
    }
    assert protected <= listed, protected - listed
