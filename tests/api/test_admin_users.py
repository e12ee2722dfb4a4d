"""The admin API for users (/admin/users, scope admin) and the operator commands that share its
service: who may call it, what each action does at once, and the audit record it leaves."""

from __future__ import annotations

import jwt
import pytest
from helpers import PASSWORD, assert_error, bearer, login, signup

from authsvc.appkeys import TOKENS

ADMIN = "root@example.com"
VICTIM = "eve@example.com"


def scope_of(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["scope"]


async def log_in(client, email: str) -> dict:
    resp = await client.post("/auth", json={"email": email, "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    return await resp.json()


@pytest.fixture
async def admin(client, db) -> dict:
    """An admin's id and bearer header: roles set in SQL, as `authsvc users roles` would."""
    user = await signup(client, ADMIN)
    await db.execute("UPDATE users SET roles = '{admin}' WHERE id = $1", user["id"])
    token = await login(client, ADMIN)
    assert scope_of(token) == "admin profile todos"
    return {"id": user["id"], "auth": bearer(token)}


async def audit(db) -> list[tuple[str, str, str, str]]:
    """(actor, action, target, address) of every admin record, oldest first."""
    rows = await db.fetch(
        "SELECT actor, reason, identifier, address FROM auth_events WHERE outcome = 'admin' ORDER BY id"
    )
    return [tuple(row) for row in rows]


# --- who may call it ---


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/admin/users"),
        ("GET", "/admin/users/1"),
        ("POST", "/admin/users/1/disable"),
        ("POST", "/admin/users/1/enable"),
        ("DELETE", "/admin/users/1"),
        ("PUT", "/admin/users/1/roles"),
    ],
)
async def test_without_admin_scope_403_and_without_a_token_401(client, db, method, path):
    await signup(client, VICTIM)
    user_token = await login(client, VICTIM)
    body = {"roles": ["admin"]} if method == "PUT" else None
    resp = await client.request(method, path, json=body, headers=bearer(user_token))
    await assert_error(resp, 403, "insufficient_scope")
    assert 'scope="admin"' in resp.headers["WWW-Authenticate"]
    resp = await client.request(method, path, json=body)
    await assert_error(resp, 401, "unauthorized")
    # Nothing happened: the user still holds only its own role, and nothing was recorded.
    assert await db.fetchval("SELECT roles FROM users WHERE email = $1", VICTIM) == ["user"]
    assert await audit(db) == []


async def test_an_ended_admin_session_is_401_on_every_admin_route(client, admin, db):
    victim = await signup(client, VICTIM)
    assert (await client.post("/auth/logout", headers=admin["auth"])).status == 204
    path = f"/admin/users/{victim['id']}"
    for method, url, body in [
        ("GET", "/admin/users", None),
        ("GET", path, None),
        ("POST", f"{path}/disable", None),
        ("POST", f"{path}/enable", None),
        ("DELETE", path, None),
        ("PUT", f"{path}/roles", {"roles": ["admin"]}),
    ]:
        await assert_error(await client.request(method, url, json=body, headers=admin["auth"]), 401, "invalid_token")
    assert await db.fetchval("SELECT roles FROM users WHERE id = $1", victim["id"]) == ["user"]
    assert await audit(db) == []


async def test_an_admin_login_that_asked_for_less_is_refused_too(client, admin):
    resp = await client.post("/auth", json={"email": ADMIN, "password": PASSWORD, "scope": "profile todos"})
    narrow = bearer((await resp.json())["access_token"])
    await assert_error(await client.get("/admin/users", headers=narrow), 403, "insufficient_scope")


# --- reading ---


async def test_search_by_email_prefix_pages_by_id(client, admin):
    ids = [(await signup(client, f"alice{n}@example.com"))["id"] for n in range(3)]
    await signup(client, "bob@example.com")

    resp = await client.get("/admin/users?email_prefix=ALICE&limit=2", headers=admin["auth"])
    assert resp.status == 200, await resp.text()
    page = await resp.json()
    assert [u["id"] for u in page] == ids[:2]
    assert page[0]["email"] == "alice0@example.com" and page[0]["roles"] == ["user"]
    assert page[0]["disabled_at"] is None and "password_hash" not in page[0]
    link = f"/admin/users?after={ids[1]}&limit=2&email_prefix=ALICE"
    assert resp.headers["Link"] == f'<{link}>; rel="next"'  # relative to this host, as for /todos

    resp = await client.get(link, headers=admin["auth"])
    assert [u["id"] for u in await resp.json()] == ids[2:]
    assert "Link" not in resp.headers  # a short page is the last

    resp = await client.get("/admin/users", headers=admin["auth"])
    emails = [u["email"] for u in await resp.json()]
    assert emails == [ADMIN, "alice0@example.com", "alice1@example.com", "alice2@example.com", "bob@example.com"]
    # A prefix is a prefix, not a pattern: LIKE's wildcards match only themselves.
    resp = await client.get("/admin/users?email_prefix=%25", headers=admin["auth"])
    assert await resp.json() == []


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=201", "after=-1", "after=x", "limit=1&limit=2", "email_prefix=", "other=1"]
)
async def test_a_bad_query_is_422(client, admin, query):
    await assert_error(await client.get(f"/admin/users?{query}", headers=admin["auth"]), 422, "validation_failed")


async def test_get_one_user_and_ids_that_name_nobody(client, admin):
    user = await signup(client, VICTIM, first_name="Eve")
    resp = await client.get(f"/admin/users/{user['id']}", headers=admin["auth"])
    assert resp.status == 200
    shown = await resp.json()
    assert shown == {**user, "roles": ["user"], "disabled_at": None}
    for bad in ("999", "0", "abc", "-1", "99999999999999999999"):
        await assert_error(await client.get(f"/admin/users/{bad}", headers=admin["auth"]), 404, "not_found")


# --- actions ---


async def test_disable_ends_the_users_sessions_at_once_and_enable_lets_them_log_in(client, admin, db):
    user = await signup(client, VICTIM)
    pair = await log_in(client, VICTIM)
    path = f"/admin/users/{user['id']}"

    resp = await client.post(f"{path}/disable", headers=admin["auth"])
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["disabled_at"] is not None
    # The access token is unexpired and well signed: refused on its next use all the same.
    await assert_error(await client.get("/users/me", headers=bearer(pair["access_token"])), 401, "invalid_token")
    await assert_error(await client.get("/todos", headers=bearer(pair["access_token"])), 401, "invalid_token")
    resp = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    await assert_error(resp, 400, "invalid_grant")
    resp = await client.post("/auth", json={"email": VICTIM, "password": PASSWORD})
    await assert_error(resp, 401, "invalid_credentials")
    # Disabling again is harmless.
    assert (await client.post(f"{path}/disable", headers=admin["auth"])).status == 200

    resp = await client.post(f"{path}/enable", headers=admin["auth"])
    assert resp.status == 200 and (await resp.json())["disabled_at"] is None
    token = await login(client, VICTIM)
    assert (await client.get("/users/me", headers=bearer(token))).status == 200
    # What the disabling ended stays ended.
    await assert_error(await client.get("/users/me", headers=bearer(pair["access_token"])), 401, "invalid_token")

    actor, target = f"user:{admin['id']}", f"user:{user['id']}"
    assert await audit(db) == [
        (actor, "user.disable", target, "127.0.0.1"),
        (actor, "user.disable", target, "127.0.0.1"),
        (actor, "user.enable", target, "127.0.0.1"),
    ]


async def test_delete_removes_the_user_and_its_sessions(client, admin, db):
    user = await signup(client, VICTIM)
    token = await login(client, VICTIM)
    path = f"/admin/users/{user['id']}"
    resp = await client.delete(path, headers=admin["auth"])
    assert resp.status == 204
    await assert_error(await client.get(path, headers=admin["auth"]), 404, "not_found")
    await assert_error(await client.get("/users/me", headers=bearer(token)), 401, "invalid_token")
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", user["id"]) == 0
    await assert_error(await client.delete(path, headers=admin["auth"]), 404, "not_found")
    for action in ("disable", "enable"):
        await assert_error(await client.post(f"{path}/{action}", headers=admin["auth"]), 404, "not_found")
    # Only what took effect is recorded.
    assert await audit(db) == [(f"user:{admin['id']}", "user.delete", f"user:{user['id']}", "127.0.0.1")]


async def test_more_roles_come_with_the_next_refresh_and_fewer_end_the_sessions(client, admin, db):
    user = await signup(client, VICTIM)
    pair = await log_in(client, VICTIM)
    assert pair["scope"] == "profile todos"
    path = f"/admin/users/{user['id']}/roles"

    resp = await client.put(path, json={"roles": ["admin", "user"]}, headers=admin["auth"])
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["roles"] == ["admin", "user"]
    # A promotion ends nothing: the session goes on, and its next refresh carries the new scope.
    assert (await client.get("/users/me", headers=bearer(pair["access_token"]))).status == 200
    resp = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    pair = await resp.json()
    assert pair["scope"] == "admin profile todos"
    assert (await client.get("/admin/users", headers=bearer(pair["access_token"]))).status == 200

    resp = await client.put(path, json={"roles": ["user"]}, headers=admin["auth"])
    assert resp.status == 200 and (await resp.json())["roles"] == ["user"]
    # A demotion: the tokens carry scopes the user no longer has, so the sessions end now.
    await assert_error(await client.get("/admin/users", headers=bearer(pair["access_token"])), 401, "invalid_token")
    await assert_error(await client.get("/users/me", headers=bearer(pair["access_token"])), 401, "invalid_token")
    resp = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    await assert_error(resp, 400, "invalid_grant")
    fresh = await log_in(client, VICTIM)
    assert fresh["scope"] == "profile todos"
    assert await db.fetchval(
        "SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_reason = 'roles_changed'", user["id"]
    ) == 1

    actor, target = f"user:{admin['id']}", f"user:{user['id']}"
    assert await audit(db) == [
        (actor, "user.roles", target, "127.0.0.1"),
        (actor, "user.roles", target, "127.0.0.1"),
    ]


@pytest.mark.parametrize(
    "body, code",
    [
        ({"roles": ["superuser"]}, "unknown_role"),
        ({"roles": ["user", "root"]}, "unknown_role"),
        ({"roles": "admin"}, "validation_failed"),
        ({"roles": ["has space"]}, "validation_failed"),
        ({"roles": [""]}, "validation_failed"),
        ({}, "validation_failed"),
        ({"roles": ["user"], "extra": 1}, "validation_failed"),
    ],
)
async def test_unknown_roles_and_bad_bodies_are_422_and_change_nothing(client, admin, db, body, code):
    user = await signup(client, VICTIM)
    resp = await client.put(f"/admin/users/{user['id']}/roles", json=body, headers=admin["auth"])
    error = await assert_error(resp, 422, code)
    if code == "unknown_role":
        assert "admin, user" in error["message"]  # the roles there are
    if body.get("roles") == ["has space"]:
        assert list(error["details"]["roles"]) == ["0"]  # the item's index, as a JSON key
    assert await db.fetchval("SELECT roles FROM users WHERE id = $1", user["id"]) == ["user"]
    assert await audit(db) == []


async def test_an_admin_cannot_lock_themselves_out(client, admin, db):
    path = f"/admin/users/{admin['id']}"
    await assert_error(await client.post(f"{path}/disable", headers=admin["auth"]), 409, "own_account")
    await assert_error(await client.delete(path, headers=admin["auth"]), 409, "own_account")
    resp = await client.put(f"{path}/roles", json={"roles": ["user"]}, headers=admin["auth"])
    await assert_error(resp, 409, "own_account")
    # Roles that grant no less are fine, and the admin's session goes on.
    resp = await client.put(f"{path}/roles", json={"roles": ["admin", "user"]}, headers=admin["auth"])
    assert resp.status == 200
    assert (await client.get(path, headers=admin["auth"])).status == 200
    state = "SELECT disabled_at IS NULL AND roles = '{admin,user}' FROM users WHERE id = $1"
    assert await db.fetchval(state, admin["id"])
    me = f"user:{admin['id']}"
    assert await audit(db) == [(me, "user.roles", me, "127.0.0.1")]


async def test_a_client_with_scope_admin_acts_as_itself(client, db):
    """A service's own token (client_credentials) is taken too, and recorded as the client."""
    user = await signup(client, VICTIM)
    await db.execute(
        "INSERT INTO clients (id, name, scopes, auth_method, token_ttl) VALUES"
        " ('cl_ops', 'ops', '{admin}', 'client_secret', 300), ('cl_other', 'other', '{todos}', 'client_secret', 300)"
    )
    tokens = client.app[TOKENS]
    ops = bearer(tokens.issue_client("cl_ops", frozenset({"admin"}), 300))
    resp = await client.post(f"/admin/users/{user['id']}/disable", headers=ops)
    assert resp.status == 200, await resp.text()
    other = bearer(tokens.issue_client("cl_other", frozenset({"todos"}), 300))
    resp = await client.post(f"/admin/users/{user['id']}/enable", headers=other)
    await assert_error(resp, 403, "insufficient_scope")
    assert await audit(db) == [("client:cl_ops", "user.disable", f"user:{user['id']}", "127.0.0.1")]


# --- the operator's commands: the same service, recorded as `operator` ---




async def test_the_first_admin_is_made_on_the_command_line(client, authsvc, db):
    user = await signup(client, ADMIN)
    pair = await log_in(client, ADMIN)
    code, out, err = await authsvc("users", "roles", ADMIN.upper(), "admin", "user")
    assert code == 0, err
    assert out == f"authsvc: user {user['id']} {ADMIN} roles: admin user\n"
    resp = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    token = (await resp.json())["access_token"]
    assert (await client.get("/admin/users", headers=bearer(token))).status == 200

    code, out, err = await authsvc("users", "roles", ADMIN, "user")
    assert code == 0, err
    assert out == f"authsvc: user {user['id']} {ADMIN} roles: user; 1 session(s) ended\n"
    await assert_error(await client.get("/users/me", headers=bearer(token)), 401, "invalid_token")

    assert await authsvc("users", "roles", ADMIN, "wizard") == (
        2, "", "authsvc: ROLE: 'wizard' is not a role here (AUTHSVC_ROLES defines: admin, user).\n"
    )
    assert await authsvc("users", "roles", "nobody@example.com", "admin") == (
        1, "", "authsvc: no user with email nobody@example.com\n"
    )
    assert (await authsvc("users", "disable", ADMIN))[0] == 0
    assert (await authsvc("users", "enable", ADMIN))[0] == 0
    target = f"user:{user['id']}"
    assert await audit(db) == [
        ("operator", "user.roles", target, "local"),
        ("operator", "user.roles", target, "local"),
        ("operator", "user.disable", target, "local"),
        ("operator", "user.enable", target, "local"),
    ]


async def test_create_with_a_role(client, authsvc, monkeypatch):
    monkeypatch.setattr("sys.stdin", _Line(PASSWORD))
    code, out, err = await authsvc("users", "create", ADMIN, "--role", "admin", "--password-stdin")
    assert code == 0, err
    assert out == f"authsvc: created user 1 {ADMIN} with role admin\n"
    assert scope_of(await login(client, ADMIN)) == "admin profile todos"
    code, out, err = await authsvc("users", "create", VICTIM, "--role", "wizard", "--password-stdin")
    assert (code, out) == (2, "") and "--role: 'wizard' is not one of AUTHSVC_ROLES" in err


class _Line:
    """stdin holding one line (for --password-stdin)."""

    def __init__(self, text: str) -> None:
        self._lines = [text + "\n"]

    def readline(self) -> str:
        return self._lines.pop(0) if self._lines else ""

    def isatty(self) -> bool:
        return False
