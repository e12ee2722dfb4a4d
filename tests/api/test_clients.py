"""OAuth2 clients end to end: the client_credentials grant by each way a client authenticates,
the scopes it gets, throttling, secret rotation, disabling, introspection, the admin API and
`authsvc clients`."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import urllib.parse
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from helpers import PASSWORD, assert_error, bearer, signup

from authsvc.appkeys import SETTINGS

ADMIN = "root@example.com"
TOKEN_FORM = {"grant_type": "client_credentials"}


def basic(client_id: str, secret: str) -> dict[str, str]:
    # RFC 6749 2.3.1: each part form-urlencoded, then base64.
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


@pytest.fixture
async def admin(client: TestClient, db) -> dict[str, str]:
    await signup(client, ADMIN)
    await db.execute("UPDATE users SET roles = '{admin}' WHERE email = $1", ADMIN)
    resp = await client.post("/auth", json={"email": ADMIN, "password": PASSWORD})
    return bearer((await resp.json())["access_token"])


async def make_client_identity(
    client: TestClient, admin: dict[str, str], name: str = "orders", scopes: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    body = {"name": name, "scopes": ["todos", "introspect"] if scopes is None else scopes, **extra}
    resp = await client.post("/admin/clients", json=body, headers=admin)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def token_by_basic(client: TestClient, client_id: str, secret: str, **form: str) -> Any:
    return await client.post("/auth/token", data={**TOKEN_FORM, **form}, headers=basic(client_id, secret))


async def granted(resp: Any) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == 200, body
    assert body["token_type"] == "bearer" and "refresh_token" not in body
    assert resp.headers["Cache-Control"] == "no-store"
    return body


# --- the grant, by each way of authenticating ---


async def test_client_secret_basic_gets_a_client_token(client, admin):
    made = await make_client_identity(client, admin, token_ttl=120)
    assert made["id"].startswith("cl_") and made["client_secret"].startswith("cs_")
    body = await granted(await token_by_basic(client, made["id"], made["client_secret"]))
    assert body["scope"] == "introspect todos" and body["expires_in"] == 120
    claims = claims_of(body["access_token"])
    assert claims["sub"] == claims["client_id"] == made["id"] and "sid" not in claims
    assert claims["exp"] - claims["iat"] == 120


async def test_client_secret_post_and_the_json_login_get_the_same(client, admin):
    made = await make_client_identity(client, admin)
    form = {**TOKEN_FORM, "client_id": made["id"], "client_secret": made["client_secret"], "scope": "todos"}
    body = await granted(await client.post("/auth/token", data=form))
    assert body["scope"] == "todos"
    resp = await client.post("/auth", json={"client_id": made["id"], "client_secret": made["client_secret"]})
    assert (await granted(resp))["scope"] == "introspect todos"


async def test_a_client_token_works_only_where_its_scopes_and_kind_allow(client, admin):
    made = await make_client_identity(client, admin, scopes=["admin"])
    token = (await granted(await token_by_basic(client, made["id"], made["client_secret"])))["access_token"]
    assert (await client.get("/admin/clients", headers=bearer(token))).status == 200
    # A user's route does not take a client's token, whatever its scopes.
    await assert_error(await client.get("/users/me", headers=bearer(token)), 403, "insufficient_scope")


@pytest.mark.parametrize("scope", ["admin", "todos admin", "no-such-scope", 'bad"quote'])
async def test_a_scope_beyond_the_clients_is_invalid_scope(client, admin, scope):
    made = await make_client_identity(client, admin)
    resp = await token_by_basic(client, made["id"], made["client_secret"], scope=scope)
    body = await resp.json()
    assert resp.status == 400 and body["error"] == "invalid_scope" and body["error_description"], body


async def test_unknown_and_wrong_clients_get_the_same_answer(client, admin):
    made = await make_client_identity(client, admin)
    answers = []
    for client_id, secret in [
        (made["id"], "cs_" + secrets.token_urlsafe(32)),  # wrong secret
        ("cl_0000000000000000", made["client_secret"]),  # unknown client
        ("not a client id!", "whatever-secret"),  # no client can have this id
    ]:
        resp = await token_by_basic(client, client_id, secret)
        answers.append((resp.status, await resp.json(), resp.headers["WWW-Authenticate"]))
    assert answers[0] == answers[1] == answers[2], answers
    status, body, challenge = answers[0]
    assert status == 401 and body["error"] == "invalid_client" and challenge == 'Basic realm="authsvc"'
    # The same through the form and the JSON login.
    form = {**TOKEN_FORM, "client_id": "cl_0000000000000000", "client_secret": "x" * 40}
    await assert_error(await client.post("/auth/token", data=form), 401, "invalid_client")
    resp = await client.post("/auth", json={"client_id": made["id"], "client_secret": "x" * 40})
    await assert_error(resp, 401, "invalid_client")


@pytest.mark.parametrize(
    ("headers", "form", "status", "code"),
    [
        ({}, {}, 401, "invalid_client"),  # no authentication at all
        ({"Authorization": "Basic not-base64!"}, {}, 401, "invalid_client"),
        (None, {"client_secret": "cs_x" * 10}, 400, "invalid_request"),  # two methods at once
        ({}, {"client_secret": "cs_" + "x" * 40}, 400, "invalid_request"),  # a secret without its id
        ({}, {"client_assertion": "a.b.c"}, 400, "invalid_request"),  # no assertion type
    ],
)
async def test_malformed_client_authentication_is_a_clear_error(client, admin, headers, form, status, code):
    made = await make_client_identity(client, admin)
    if headers is None:
        headers = basic(made["id"], made["client_secret"])
    resp = await client.post("/auth/token", data={**TOKEN_FORM, **form}, headers=headers)
    await assert_error(resp, status, code)


async def test_failed_client_authentications_are_throttled(make_client, db):
    app_client = await make_client(login_backoff_base_ms=300, login_backoff_max_ms=300)
    await signup(app_client, ADMIN)
    await db.execute("UPDATE users SET roles = '{admin}' WHERE email = $1", ADMIN)
    resp = await app_client.post("/auth", json={"email": ADMIN, "password": PASSWORD})
    made = await make_client_identity(app_client, bearer((await resp.json())["access_token"]))
    wrong = "cs_" + secrets.token_urlsafe(32)
    # Parallel guesses at a client take turns; the first failure closes it for the rest.
    answers = await asyncio.gather(*(token_by_basic(app_client, made["id"], wrong) for _ in range(3)))
    assert sorted(a.status for a in answers) == [401, 429, 429]
    refused = [a for a in answers if a.status == 429]
    assert all(int(a.headers["Retry-After"]) >= 1 for a in refused)
    row = await db.fetchrow("SELECT failures FROM login_backoff WHERE identifier = $1", f"client:{made['id']}")
    assert row is not None and row["failures"] == 1


# --- rotation, disabling, deletion ---


async def test_rotation_keeps_both_secrets_until_the_old_are_retired(client, admin, db):
    made = await make_client_identity(client, admin)
    resp = await client.post(f"/admin/clients/{made['id']}/secrets", headers=admin)
    assert resp.status == 201
    new = (await resp.json())["client_secret"]
    assert new.startswith("cs_") and new != made["client_secret"]
    for secret in (made["client_secret"], new):
        await granted(await token_by_basic(client, made["id"], secret))
    resp = await client.post(f"/admin/clients/{made['id']}/secrets/retire", headers=admin)
    assert resp.status == 200 and await resp.json() == {"retired": 1}
    await assert_error(await token_by_basic(client, made["id"], made["client_secret"]), 401, "invalid_client")
    await granted(await token_by_basic(client, made["id"], new))
    # Only digests are stored.
    stored = await db.fetch("SELECT secret_hash FROM client_secrets WHERE client_id = $1", made["id"])
    assert len(stored) == 2 and all(len(row["secret_hash"]) == 32 for row in stored)


async def test_a_disabled_clients_token_stops_at_once_and_in_introspection(client, admin):
    watcher = await make_client_identity(client, admin, name="watcher", scopes=["introspect"])
    made = await make_client_identity(client, admin, scopes=["admin"])
    token = (await granted(await token_by_basic(client, made["id"], made["client_secret"])))["access_token"]

    async def introspect() -> dict[str, Any]:
        resp = await client.post(
            "/auth/introspect", data={"token": token}, headers=basic(watcher["id"], watcher["client_secret"])
        )
        assert resp.status == 200, await resp.text()
        return await resp.json()

    live = await introspect()
    assert live["active"] is True and live["client_id"] == made["id"] and live["scope"] == "admin"
    resp = await client.post(f"/admin/clients/{made['id']}/disable", headers=admin)
    assert resp.status == 200 and (await resp.json())["disabled_at"] is not None
    await assert_error(await client.get("/admin/clients", headers=bearer(token)), 401, "invalid_token")
    assert await introspect() == {"active": False}
    await assert_error(await token_by_basic(client, made["id"], made["client_secret"]), 401, "invalid_client")
    resp = await client.post(f"/admin/clients/{made['id']}/enable", headers=admin)
    assert resp.status == 200 and (await resp.json())["disabled_at"] is None
    assert (await client.get("/admin/clients", headers=bearer(token))).status == 200
    assert (await client.delete(f"/admin/clients/{made['id']}", headers=admin)).status == 204
    await assert_error(await client.get("/admin/clients", headers=bearer(token)), 401, "invalid_token")
    await assert_error(await client.delete(f"/admin/clients/{made['id']}", headers=admin), 404, "not_found")


async def test_introspection_needs_the_introspect_scope(client, admin, user_token):
    made = await make_client_identity(client, admin, scopes=["todos"])
    resp = await client.post(
        "/auth/introspect", data={"token": user_token}, headers=basic(made["id"], made["client_secret"])
    )
    await assert_error(resp, 403, "insufficient_scope")
    resp = await client.post(
        "/auth/introspect", data={"token": user_token}, headers=basic(made["id"], "cs_" + "x" * 43)
    )
    await assert_error(resp, 401, "invalid_client")


# --- the admin API ---


async def test_the_admin_api_refuses_without_the_admin_scope(client, auth):
    for method, path in [
        ("POST", "/admin/clients"),
        ("GET", "/admin/clients"),
        ("POST", "/admin/clients/cl_0000000000000000/secrets"),
        ("POST", "/admin/clients/cl_0000000000000000/secrets/retire"),
        ("POST", "/admin/clients/cl_0000000000000000/disable"),
        ("POST", "/admin/clients/cl_0000000000000000/enable"),
        ("DELETE", "/admin/clients/cl_0000000000000000"),
    ]:
        resp = await client.request(method, path, headers=auth, json={"name": "x", "scopes": []})
        await assert_error(resp, 403, "insufficient_scope")
        assert 'scope="admin"' in resp.headers["WWW-Authenticate"]


async def test_each_admin_action_is_audited_with_its_actor(client, admin, db):
    admin_id = await db.fetchval("SELECT id FROM users WHERE email = $1", ADMIN)
    made = await make_client_identity(client, admin)
    path = f"/admin/clients/{made['id']}"
    for method, suffix in [("POST", "/secrets"), ("POST", "/secrets/retire"), ("POST", "/disable"),
                           ("POST", "/enable"), ("DELETE", "")]:
        assert (await client.request(method, path + suffix, headers=admin)).status < 300
    rows = await db.fetch("SELECT actor, reason, identifier, address FROM auth_events WHERE outcome = 'admin' ORDER BY id")
    assert [r["reason"] for r in rows] == [
        "client.create", "client.rotate", "client.retire", "client.disable", "client.enable", "client.delete",
    ]
    assert {(r["actor"], r["identifier"], r["address"]) for r in rows} == {
        (f"user:{admin_id}", f"client:{made['id']}", "127.0.0.1")
    }


async def test_admin_bad_input_is_a_clear_error(client, admin):
    await make_client_identity(client, admin)
    cases = [
        ({"name": "orders", "scopes": []}, 409, "client_name_taken"),
        ({"name": "x", "scopes": ["no-such"]}, 400, "invalid_scope"),
        ({"name": "x", "scopes": [], "token_ttl": 5}, 422, "validation_failed"),
        ({"name": "x", "scopes": [], "auth_method": "private_key_jwt"}, 400, "invalid_request"),
        ({"name": "x", "scopes": [], "auth_method": "private_key_jwt", "jwks": {"keys": [{"kty": "oct", "k": "AA"}]}},
         400, "invalid_request"),
        ({"name": "x", "scopes": [], "jwks_uri": "https://example.com/jwks"}, 400, "invalid_request"),
    ]
    for body, status, code in cases:
        await assert_error(await client.post("/admin/clients", json=body, headers=admin), status, code)
    await assert_error(await client.post("/admin/clients/no such!/disable", headers=admin), 404, "not_found")
    listed = await (await client.get("/admin/clients", headers=admin)).json()
    assert [c["name"] for c in listed] == ["orders"] and "client_secret" not in listed[0]


# --- private_key_jwt (RFC 7523) ---


def ed25519_pair(kid: str) -> tuple[Any, dict[str, Any]]:
    private = ed25519.Ed25519PrivateKey.generate()
    public = jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return private, {**public, "kid": kid, "alg": "EdDSA", "use": "sig"}


@pytest.fixture
async def jwt_client(client, admin) -> tuple[dict[str, Any], Any]:
    private, public = ed25519_pair("k1")
    made = await make_client_identity(
        client, admin, name="signer", scopes=["todos"], auth_method="private_key_jwt", jwks={"keys": [public]}
    )
    assert "client_secret" not in made
    return made, private


def assertion(client_id: str, key: Any, audience: str, *, alg: str = "EdDSA", kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": client_id, "sub": client_id, "aud": audience, "iat": now, "exp": now + 60,
            "jti": secrets.token_urlsafe(16), **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def assertion_form(token: str) -> dict[str, str]:
    return {**TOKEN_FORM, "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": token}


def token_url(client: TestClient) -> str:
    return client.app[SETTINGS].public_url.rstrip("/") + "/auth/token"


async def test_private_key_jwt_gets_a_token_once_per_assertion(client, jwt_client, db):
    made, key = jwt_client
    signed = assertion(made["id"], key, token_url(client))
    body = await granted(await client.post("/auth/token", data=assertion_form(signed)))
    assert body["scope"] == "todos" and claims_of(body["access_token"])["client_id"] == made["id"]
    # The issuer is an accepted audience too.
    issuer = client.app[SETTINGS].issuer
    await granted(await client.post("/auth/token", data=assertion_form(assertion(made["id"], key, issuer))))
    # A replay is refused, on every replica: the jti is in the database.
    await assert_error(await client.post("/auth/token", data=assertion_form(signed)), 401, "invalid_client")
    assert await db.fetchval("SELECT count(*) FROM client_assertions WHERE client_id = $1", made["id"]) == 2
    # A secret is no way in for this client.
    form = {**TOKEN_FORM, "client_id": made["id"], "client_secret": "cs_" + "x" * 43}
    await assert_error(await client.post("/auth/token", data=form), 401, "invalid_client")


async def test_private_key_jwt_refusals(client, jwt_client):
    made, key = jwt_client
    url = token_url(client)
    other, _ = ed25519_pair("k1")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    _, public = ed25519_pair("k1")
    unsigned = jwt.encode({"iss": made["id"], "sub": made["id"], "aud": url, "exp": now + 60, "jti": "n1"},
                          None, algorithm="none")
    bad = {
        "expired": assertion(made["id"], key, url, exp=now - 120, iat=now - 180),
        "too far ahead": assertion(made["id"], key, url, exp=now + 3600),
        "wrong audience": assertion(made["id"], key, "https://elsewhere.example/token"),
        "wrong key": assertion(made["id"], other, url),
        "another algorithm": assertion(made["id"], ec_key, url, alg="ES256"),
        "alg none": unsigned,
        "HS256 with the public key": assertion(made["id"], public["x"], url, alg="HS256"),
        "no jti": assertion(made["id"], key, url, jti=None),
        "sub is not the client": assertion(made["id"], key, url, sub="cl_0000000000000000"),
    }
    for what, signed in bad.items():
        resp = await client.post("/auth/token", data=assertion_form(signed))
        body = await resp.json()
        assert resp.status == 401 and body["error"] == "invalid_client", (what, body)


# --- the metadata ---


async def test_metadata_names_the_client_methods_and_scopes(client):
    doc = await (await client.get("/.well-known/oauth-authorization-server")).json()
    assert "client_credentials" in doc["grant_types_supported"]
    assert {"client_secret_basic", "client_secret_post", "private_key_jwt"} <= set(
        doc["token_endpoint_auth_methods_supported"]
    )
    assert "EdDSA" in doc["token_endpoint_auth_signing_alg_values_supported"]
    assert "HS256" not in doc["token_endpoint_auth_signing_alg_values_supported"]
    assert {"profile", "todos", "admin", "introspect"} <= set(doc["scopes_supported"])
    assert doc["introspection_endpoint"].endswith("/auth/introspect")


# --- `authsvc clients` ---




async def test_the_clients_commands_run_the_service_code(client, authsvc, db, tmp_path):
    code, out, err = await authsvc("clients", "create", "billing", "--scopes", "todos introspect", "--token-ttl", "300")
    assert code == 0, err
    client_id = out.split()[3]
    first = out.splitlines()[-1].removeprefix("client_secret: ")
    assert client_id.startswith("cl_") and first.startswith("cs_")
    body = await granted(await token_by_basic(client, client_id, first))
    assert body["expires_in"] == 300 and body["scope"] == "introspect todos"

    code, out, _ = await authsvc("clients", "rotate", client_id)
    second = out.splitlines()[-1].removeprefix("client_secret: ")
    assert code == 0 and second.startswith("cs_") and second != first
    code, out, _ = await authsvc("clients", "retire", client_id)
    assert code == 0 and "1 secret(s)" in out
    await assert_error(await token_by_basic(client, client_id, first), 401, "invalid_client")
    await granted(await token_by_basic(client, client_id, second))

    code, out, _ = await authsvc("clients", "list")
    assert code == 0 and client_id in out and "enabled" in out and second not in out
    assert (await authsvc("clients", "disable", client_id))[0] == 0
    await assert_error(await token_by_basic(client, client_id, second), 401, "invalid_client")
    assert (await authsvc("clients", "enable", client_id))[0] == 0
    await granted(await token_by_basic(client, client_id, second))

    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps({"keys": [ed25519_pair("k1")[1]]}))
    code, out, err = await authsvc("clients", "create", "signer", "--scopes", "todos", "--jwks", str(keys))
    assert code == 0 and "private_key_jwt" in out and "client_secret" not in out, err

    assert (await authsvc("clients", "delete", client_id))[0] == 0
    code, _, err = await authsvc("clients", "delete", client_id)
    assert code == 1 and "No such client" in err
    code, _, err = await authsvc("clients", "create", "x", "--scopes", "no-such")
    assert code == 1 and "no-such" in err
    actions = await db.fetch("SELECT reason FROM auth_events WHERE actor = 'operator' ORDER BY id")
    assert [r["reason"] for r in actions] == [
        "client.create", "client.rotate", "client.retire", "client.disable", "client.enable", "client.create",
        "client.delete",
    ]
