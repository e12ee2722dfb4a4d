"""Scopes in tokens (RFC 9068) and what authsvc's own routes need (RFC 6750 3.1 on 403)."""

from __future__ import annotations

import jwt
import pytest
from helpers import PASSWORD, assert_error, bearer, signup

from authsvc.appkeys import TOKENS
from authsvc.http.middlewares import needs_of

EMAIL = "scoped@example.com"


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


async def log_in(client, scope: str | None = None, email: str = EMAIL) -> dict:
    body = {"email": email, "password": PASSWORD}
    if scope is not None:
        body["scope"] = scope
    resp = await client.post("/auth", json=body)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def assert_insufficient(resp, scope: str) -> None:
    await assert_error(resp, 403, "insufficient_scope")
    challenge = resp.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge and f'scope="{scope}"' in challenge, challenge


async def test_a_login_token_carries_its_roles_scopes(client):
    await signup(client, EMAIL)
    pair = await log_in(client)
    assert pair["scope"] == "profile todos"
    assert claims_of(pair["access_token"])["scope"] == "profile todos"


async def test_a_login_can_ask_for_less_and_routes_hold_it_to_that(client):
    await signup(client, EMAIL)
    pair = await log_in(client, "todos")
    assert pair["scope"] == "todos"
    auth = bearer(pair["access_token"])
    assert (await client.get("/todos", headers=auth)).status == 200
    await assert_insufficient(await client.get("/users/me", headers=auth), "profile")
    await assert_insufficient(await client.patch("/users/me", json={"first_name": "X"}, headers=auth), "profile")
    # A refresh keeps what the login asked for.
    refreshed = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert (await refreshed.json())["scope"] == "todos"


@pytest.mark.parametrize("scope", ["admin", "todos admin", "no-such-scope", 'bad"quote'])
async def test_asking_for_a_scope_beyond_the_roles_is_invalid_scope(client, db, scope):
    await signup(client, EMAIL)
    resp = await client.post("/auth", json={"email": EMAIL, "password": PASSWORD, "scope": scope})
    body = await resp.json()
    assert resp.status == 400 and body["error"] == "invalid_scope", body
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_the_password_grant_narrows_too(client):
    await signup(client, EMAIL)
    form = {"grant_type": "password", "username": EMAIL, "password": PASSWORD, "scope": "profile"}
    resp = await client.post("/auth/token", data=form)
    assert resp.status == 200, await resp.text()
    assert claims_of((await resp.json())["access_token"])["scope"] == "profile"
    form["scope"] = "admin"
    resp = await client.post("/auth/token", data=form)
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_scope"


async def test_a_refresh_takes_the_roles_the_user_holds_now(client, db):
    await signup(client, EMAIL)
    pair = await log_in(client)
    await db.execute("UPDATE users SET roles = '{admin}' WHERE email = $1", EMAIL)
    refreshed = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert (await refreshed.json())["scope"] == "admin profile todos"


async def test_an_ended_sessions_token_is_401_before_403(client):
    await signup(client, EMAIL)
    pair = await log_in(client, "todos")
    auth = bearer(pair["access_token"])
    assert (await client.post("/auth/logout", headers=auth)).status == 204
    await assert_error(await client.get("/users/me", headers=auth), 401, "invalid_token")


async def test_a_clients_token_does_not_act_as_a_user(client, db):
    await db.execute(
        "INSERT INTO clients (id, name, scopes, auth_method, token_ttl) VALUES ('cl_t', 't', '{todos}', 'client_secret', 300)"
    )
    token = client.app[TOKENS].issue_client("cl_t", frozenset({"todos"}), 300)
    resp = await client.get("/todos", headers=bearer(token))
    await assert_error(resp, 403, "insufficient_scope")
    await db.execute("UPDATE clients SET disabled_at = now() WHERE id = 'cl_t'")
    await assert_error(await client.get("/todos", headers=bearer(token)), 401, "invalid_token")


async def test_a_token_from_before_scopes_counts_as_the_default_role(client, db):
    """Tokens minted by the previous version (no scope claim) keep working until they expire."""
    user = await signup(client, EMAIL)
    pair = await log_in(client)
    sid = claims_of(pair["access_token"])["sid"]
    tokens = client.app[TOKENS]
    old = tokens._sign(str(user["id"]), tokens.ttl, {"sid": sid})
    assert "scope" not in claims_of(old)
    assert (await client.get("/users/me", headers=bearer(old))).status == 200
    assert (await client.get("/todos", headers=bearer(old))).status == 200


def test_every_protected_route_says_what_it_needs(app):
    for route in app.router.routes():
        handler = route.handler
        if getattr(handler, "authsvc_public", False) or route.method in ("HEAD", "OPTIONS"):
            continue
        assert hasattr(handler, "authsvc_needs"), f"{route.method} {route.resource.canonical} declares no needs"
        scopes, subjects = needs_of(handler)
        assert subjects, route


async def test_new_signups_get_the_default_role(make_client, db):
    client = await make_client(default_role="admin")
    created = await signup(client, EMAIL)
    assert await db.fetchval("SELECT roles FROM users WHERE id = $1", created["id"]) == ["admin"]


