"""API keys: made by a login session, used as a bearer, held to their scopes and their owner's."""

from __future__ import annotations

import base64
import uuid

import pytest
from helpers import PASSWORD, assert_error, bearer, login, signup

from authsvc.appkeys import API_KEYS

EMAIL = "keys@example.com"
SERVICE = ("key-checker", "key-checker-service-secret-0123")


async def make_key(client, auth, scopes=("profile", "todos"), **extra) -> dict:
    resp = await client.post("/users/me/api-keys", json={"name": "script", "scopes": list(scopes), **extra}, headers=auth)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert resp.headers["Location"] == f"/users/me/api-keys/{body['id']}"
    return body


@pytest.fixture
async def owner(client) -> tuple[dict, dict]:
    """(the signed-up user, a login session's bearer header)."""
    user = await signup(client, EMAIL)
    return user, bearer(await login(client, EMAIL))


async def test_a_key_is_shown_once_and_works_as_a_bearer(client, owner, db):
    user, auth = owner
    made = await make_key(client, auth)
    key = made["key"]
    assert key.startswith(made["prefix"] + "_") and len(made["prefix"]) == 11 and len(key) == 55
    assert made["scopes"] == ["profile", "todos"] and made["expires_at"] is None and made["last_used_at"] is None
    # Only its SHA-256 is stored.
    stored = await db.fetchrow("SELECT key_hash, prefix FROM api_keys WHERE id = $1", uuid.UUID(made["id"]))
    assert key.encode() not in stored["key_hash"] and stored["prefix"] == made["prefix"]

    listed = await (await client.get("/users/me/api-keys", headers=auth)).json()
    assert [k["id"] for k in listed] == [made["id"]]
    assert "key" not in listed[0] and key not in str(listed)
    assert {k: v for k, v in made.items() if k != "key"} == listed[0]

    as_key = bearer(key)
    me = await client.get("/users/me", headers=as_key)
    assert me.status == 200 and (await me.json())["id"] == user["id"]
    created = await client.post("/todos", json={"text": "from a script"}, headers=as_key)
    assert created.status == 201, await created.text()
    todos = await (await client.get("/todos", headers=as_key)).json()
    assert [t["text"] for t in todos] == ["from a script"]
    todo = f"/todos/{todos[0]['id']}"
    assert (await client.patch(todo, json={"completed": True}, headers=as_key)).status == 200
    assert (await (await client.get(todo, headers=auth)).json())["completed"] is True
    assert (await client.delete(todo, headers=as_key)).status == 204


async def test_a_key_is_held_to_its_scopes(client, owner):
    _, auth = owner
    as_key = bearer((await make_key(client, auth, ["todos"]))["key"])
    assert (await client.get("/todos", headers=as_key)).status == 200
    resp = await client.get("/users/me", headers=as_key)
    await assert_error(resp, 403, "insufficient_scope")
    assert 'scope="profile"' in resp.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("scopes", "status", "code"),
    [
        (["admin"], 400, "invalid_scope"),  # a scope beyond the owner's roles
        (["todos", "no-such-scope"], 400, "invalid_scope"),
        ([], 422, "validation_failed"),
        (["has space"], 422, "validation_failed"),
        ("todos", 422, "validation_failed"),
    ],
)
async def test_a_key_cannot_have_more_than_its_owner(client, owner, db, scopes, status, code):
    _, auth = owner
    resp = await client.post("/users/me/api-keys", json={"name": "x", "scopes": scopes}, headers=auth)
    body = await assert_error(resp, status, code)
    if status == 422:
        assert "scopes" in body["details"], body
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_a_login_narrowed_to_less_cannot_mint_more(client, owner):
    await signup(client, "narrow@example.com")
    resp = await client.post("/auth", json={"email": "narrow@example.com", "password": PASSWORD, "scope": "profile"})
    auth = bearer((await resp.json())["access_token"])
    resp = await client.post("/users/me/api-keys", json={"name": "x", "scopes": ["todos"]}, headers=auth)
    await assert_error(resp, 400, "invalid_scope")


async def test_a_key_cannot_manage_keys_or_the_session(client, owner):
    _, auth = owner
    made = await make_key(client, auth)
    as_key = bearer(made["key"])
    body = {"name": "another", "scopes": ["todos"]}
    await assert_error(await client.post("/users/me/api-keys", json=body, headers=as_key), 403, "insufficient_scope")
    await assert_error(await client.get("/users/me/api-keys", headers=as_key), 403, "insufficient_scope")
    deleting = await client.delete(f"/users/me/api-keys/{made['id']}", headers=as_key)
    await assert_error(deleting, 403, "insufficient_scope")
    await assert_error(await client.post("/auth/logout", headers=as_key), 403, "insufficient_scope")
    await assert_error(await client.delete("/users/me", headers=as_key), 403, "insufficient_scope")
    assert (await client.get("/users/me", headers=as_key)).status == 200


@pytest.mark.parametrize("key", ["ak_", "ak_12345678_short", "ak_" + "x" * 52, "ak_00000000_" + "A" * 43])
async def test_keys_not_ours_are_invalid_token(client, key):
    resp = await client.get("/users/me", headers=bearer(key))
    await assert_error(resp, 401, "invalid_token")
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_an_expired_key_stops(client, owner, db):
    _, auth = owner
    made = await make_key(client, auth, expires_in=3600)
    as_key = bearer(made["key"])
    assert (await client.get("/todos", headers=as_key)).status == 200
    await db.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", uuid.UUID(made["id"]))
    await assert_error(await client.get("/users/me", headers=as_key), 401, "invalid_token")
    await assert_error(await client.get("/todos", headers=as_key), 401, "invalid_token")


async def test_a_deleted_key_stops_at_once_on_every_instance(client, make_client, owner):
    _, auth = owner
    other = await make_client()
    made = await make_key(client, auth)
    as_key = bearer(made["key"])
    assert (await other.get("/todos", headers=as_key)).status == 200
    assert (await client.delete(f"/users/me/api-keys/{made['id']}", headers=auth)).status == 204
    await assert_error(await other.get("/todos", headers=as_key), 401, "invalid_token")
    await assert_error(await other.get("/users/me", headers=as_key), 401, "invalid_token")
    await assert_error(await client.get("/todos", headers=as_key), 401, "invalid_token")
    assert await (await client.get("/users/me/api-keys", headers=auth)).json() == []


async def test_one_cannot_delete_anothers_key(client, owner):
    _, auth = owner
    made = await make_key(client, auth)
    await signup(client, "other@example.com")
    theirs = bearer(await login(client, "other@example.com"))
    await assert_error(await client.delete(f"/users/me/api-keys/{made['id']}", headers=theirs), 404, "not_found")
    await assert_error(await client.delete(f"/users/me/api-keys/{uuid.uuid4()}", headers=auth), 404, "not_found")
    await assert_error(await client.delete("/users/me/api-keys/not-a-uuid", headers=auth), 404, "not_found")
    assert await (await client.get("/users/me/api-keys", headers=theirs)).json() == []
    assert (await client.get("/users/me", headers=bearer(made["key"]))).status == 200


async def test_disabling_or_deleting_the_owner_stops_the_key(client, owner, db):
    user, auth = owner
    as_key = bearer((await make_key(client, auth))["key"])
    await db.execute("UPDATE users SET disabled_at = now() WHERE id = $1", user["id"])
    await assert_error(await client.get("/users/me", headers=as_key), 401, "invalid_token")
    await assert_error(await client.get("/todos", headers=as_key), 401, "invalid_token")
    await db.execute("UPDATE users SET disabled_at = NULL WHERE id = $1", user["id"])
    assert (await client.get("/todos", headers=as_key)).status == 200
    await db.execute("DELETE FROM users WHERE id = $1", user["id"])
    await assert_error(await client.get("/todos", headers=as_key), 401, "invalid_token")


async def test_a_demoted_owners_key_loses_what_the_owner_lost(make_client, db):
    client = await make_client(roles=(("user", ("profile", "todos")), ("reader", ("profile",))))
    user = await signup(client, EMAIL)
    auth = bearer(await login(client, EMAIL))
    as_key = bearer((await make_key(client, auth))["key"])
    assert (await client.get("/todos", headers=as_key)).status == 200
    await db.execute("UPDATE users SET roles = '{reader}' WHERE id = $1", user["id"])
    await assert_error(await client.get("/todos", headers=as_key), 403, "insufficient_scope")
    assert (await client.get("/users/me", headers=as_key)).status == 200


async def test_last_use_is_written_in_batches(client, owner, db):
    _, auth = owner
    first, second = await make_key(client, auth), await make_key(client, auth, ["todos"])
    for _ in range(3):
        assert (await client.get("/users/me", headers=bearer(first["key"]))).status == 200
    assert (await client.get("/todos", headers=bearer(second["key"]))).status == 200
    # Nothing written per request ...
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE last_used_at IS NOT NULL") == 0
    await client.app[API_KEYS].flush()
    # ... then every key used, at once.
    used = await db.fetch("SELECT id, last_used_at FROM api_keys ORDER BY created_at")
    assert all(row["last_used_at"] is not None for row in used)
    listed = await (await client.get("/users/me/api-keys", headers=auth)).json()
    assert all(k["last_used_at"] is not None for k in listed)
    # A flush with nothing new leaves the times as they were.
    await client.app[API_KEYS].flush()
    assert await db.fetch("SELECT id, last_used_at FROM api_keys ORDER BY created_at") == used


async def test_the_keys_per_account_are_limited(client, owner):
    _, auth = owner
    client.app[API_KEYS]._most = 2
    await make_key(client, auth)
    await make_key(client, auth)
    resp = await client.post("/users/me/api-keys", json={"name": "third", "scopes": ["todos"]}, headers=auth)
    await assert_error(resp, 409, "too_many_api_keys")


async def test_introspection_of_a_key(make_client, db):
    client = await make_client(introspection_clients=(SERVICE,))
    user = await signup(client, EMAIL)
    auth = bearer(await login(client, EMAIL))
    made = await make_key(client, auth, ["todos"], expires_in=600)
    basic = {"Authorization": "Basic " + base64.b64encode(":".join(SERVICE).encode()).decode()}

    async def introspect() -> dict:
        resp = await client.post("/auth/introspect", data={"token": made["key"]}, headers=basic)
        assert resp.status == 200
        return await resp.json()

    answer = await introspect()
    assert answer == {
        "active": True,
        "token_type": "api_key",
        "sub": str(user["id"]),
        "scope": "todos",
        "key_id": made["id"],
        "exp": answer["exp"],
    }
    assert answer["exp"] == int((await db.fetchval("SELECT expires_at FROM api_keys")).timestamp())
    assert (await client.delete(f"/users/me/api-keys/{made['id']}", headers=auth)).status == 204
    assert await introspect() == {"active": False}


async def test_admins_see_and_delete_anyones_keys(client, owner, db):
    user, auth = owner
    made = await make_key(client, auth)
    await signup(client, "admin@example.com")
    await db.execute("UPDATE users SET roles = '{admin}' WHERE email = 'admin@example.com'")
    admin = bearer(await login(client, "admin@example.com"))
    admin_id = await db.fetchval("SELECT id FROM users WHERE email = 'admin@example.com'")

    listed = await (await client.get(f"/admin/users/{user['id']}/api-keys", headers=admin)).json()
    assert [k["id"] for k in listed] == [made["id"]] and "key" not in listed[0]
    assert await (await client.get(f"/admin/users/{admin_id}/api-keys", headers=admin)).json() == []
    await assert_error(await client.get("/admin/users/999999/api-keys", headers=admin), 404, "not_found")
    await assert_error(await client.get("/admin/users/abc/api-keys", headers=admin), 404, "not_found")
    # A user without scope admin may not.
    await assert_error(await client.get(f"/admin/users/{user['id']}/api-keys", headers=auth), 403, "insufficient_scope")
    wrong_owner = f"/admin/users/{admin_id}/api-keys/{made['id']}"
    await assert_error(await client.delete(wrong_owner, headers=admin), 404, "not_found")

    resp = await client.delete(f"/admin/users/{user['id']}/api-keys/{made['id']}", headers=admin)
    assert resp.status == 204
    await assert_error(await client.get("/users/me", headers=bearer(made["key"])), 401, "invalid_token")
    event = await db.fetchrow("SELECT actor, reason, identifier, outcome, address FROM auth_events WHERE outcome = 'admin'")
    assert dict(event) == {
        "actor": f"user:{admin_id}",
        "reason": "api_key.delete",
        "identifier": f"api_key:{made['id']}",
        "outcome": "admin",
        "address": "127.0.0.1",
    }


async def test_an_admins_key_with_scope_admin_may_act_as_admin(client, owner, db):
    user, auth = owner
    await signup(client, "admin@example.com")
    await db.execute("UPDATE users SET roles = '{admin}' WHERE email = 'admin@example.com'")
    admin = bearer(await login(client, "admin@example.com"))
    admin_key = await make_key(client, admin, ["admin"])
    resp = await client.get(f"/admin/users/{user['id']}/api-keys", headers=bearer(admin_key["key"]))
    assert resp.status == 200, await resp.text()
    mine = await make_key(client, auth)
    resp = await client.delete(f"/admin/users/{user['id']}/api-keys/{mine['id']}", headers=bearer(admin_key["key"]))
    assert resp.status == 204
    assert await db.fetchval("SELECT actor FROM auth_events WHERE outcome = 'admin'") == f"api_key:{admin_key['id']}"


async def test_the_last_uses_are_written_at_shutdown(client, make_client, owner, db):
    _, auth = owner
    made = await make_key(client, auth)
    other = await make_client()
    assert (await other.get("/users/me", headers=bearer(made["key"]))).status == 200
    assert await db.fetchval("SELECT last_used_at FROM api_keys") is None
    await other.close()
    assert await db.fetchval("SELECT last_used_at FROM api_keys") is not None


@pytest.mark.parametrize(("expires_in", "status"), [(True, 422), ("3600", 422), (59, 422), (3600.5, 422), (3600.0, 201)])
async def test_expires_in_is_a_whole_number_of_seconds(client, owner, expires_in, status):
    _, auth = owner
    body = {"name": "x", "scopes": ["todos"], "expires_in": expires_in}
    resp = await client.post("/users/me/api-keys", json=body, headers=auth)
    assert resp.status == status, await resp.text()
    if status == 201:
        made = await resp.json()
        assert made["expires_at"] is not None
    else:
        assert "expires_in" in (await resp.json())["details"]
