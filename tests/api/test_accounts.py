"""Accounts end to end: signup, login (/auth and the OAuth2 password grant), profile, bearer checks."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse
from datetime import timedelta
from typing import Any

import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import PASSWORD, assert_error, bearer, login, signup

from authsvc.app import create_app
from authsvc.auth.keyring import KeyRing

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
USER_FIELDS = {"id", "email", "first_name", "last_name", "created_at", "updated_at"}
CHALLENGE = 'Bearer realm="authsvc"'


# --- helpers ---


async def query(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def stored_hash(database_url: str, email: str) -> str:
    rows = await query(database_url, "SELECT password_hash FROM users WHERE lower(email) = lower($1)", email)
    assert len(rows) == 1
    return rows[0]["password_hash"]


async def auth_status(client: Any, email: str, password: str) -> int:
    resp = await client.post("/auth", json={"username": email, "password": password})
    if resp.status != 200:
        await assert_error(resp, 401, "invalid_credentials")
    return resp.status


def form(pairs: list[tuple[str, str]]) -> str:
    return urllib.parse.urlencode(pairs)


def grant(username: str = "owner@example.com", password: str = PASSWORD) -> list[tuple[str, str]]:
    return [("grant_type", "password"), ("username", username), ("password", password)]


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def forge(
    settings: Any,
    token: str,
    *,
    drop: tuple[str, ...] = (),
    algorithm: str | None = None,
    typ: str = "at+jwt",
    key: Any = None,
    **overrides: Any,
) -> str:
    """The claims of a real token, re-signed as the service signs (its active key and kid),
    with chosen claims changed or left out, or another key or algorithm used."""
    active = KeyRing.from_file(settings.keys_file, timedelta(0)).active
    claims = {**jwt.decode(token, options={"verify_signature": False}), "jti": "forged-jti", **overrides}
    for name in drop:
        del claims[name]
    signing_key = key if key is not None else active.private
    return jwt.encode(claims, signing_key, algorithm=algorithm or active.alg, headers={"typ": typ, "kid": active.kid})


async def assert_invalid_token(client: Any, token: str) -> None:
    resp = await client.get("/users/me", headers=bearer(token))
    await assert_error(resp, 401, "invalid_token")
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert resp.headers["WWW-Authenticate"].startswith(CHALLENGE)


# --- POST /users ---


async def test_signup_returns_the_user_without_any_hash(client, database_url):
    resp = await client.post(
        "/users", json={"email": "new@example.com", "password": PASSWORD, "first_name": "Given", "last_name": "Family"}
    )
    text = await resp.text()
    assert resp.status == 201, text
    body = json.loads(text)
    assert set(body) == USER_FIELDS
    assert isinstance(body["id"], int)
    assert (body["email"], body["first_name"], body["last_name"]) == ("new@example.com", "Given", "Family")
    assert body["created_at"] and body["updated_at"]
    assert resp.headers["Location"] == "/users/me"
    # Neither the password nor its hash may appear anywhere in the answer.
    password_hash = await stored_hash(database_url, "new@example.com")
    assert PASSWORD not in text and password_hash not in text
    assert "password" not in text.lower() and "hash" not in text.lower()


async def test_duplicate_email_is_409_case_insensitively(client, database_url):
    await signup(client, "A@x.com")
    resp = await client.post("/users", json={"email": "a@X.COM", "password": "another password"})
    await assert_error(resp, 409, "email_taken")
    rows = await query(database_url, "SELECT email FROM users")
    assert [r["email"] for r in rows] == ["A@x.com"]
    # The first account keeps its own password.
    await login(client, "a@x.com")


async def test_parallel_signups_for_one_email_make_one_account(client, database_url):
    async def attempt(i: int) -> int:
        resp = await client.post("/users", json={"email": "race@example.com", "password": f"{PASSWORD} {i}"})
        if resp.status != 201:
            await assert_error(resp, 409, "email_taken")
        return resp.status

    statuses = await asyncio.gather(*(attempt(i) for i in range(50)))
    assert statuses.count(201) == 1
    assert statuses.count(409) == 49
    rows = await query(database_url, "SELECT count(*) AS n FROM users WHERE lower(email) = 'race@example.com'")
    assert rows[0]["n"] == 1


@pytest.mark.parametrize("length", [7, 1025])
async def test_password_length_out_of_bounds_is_422(client, database_url, length):
    resp = await client.post("/users", json={"email": "short@example.com", "password": "p" * length})
    body = await assert_error(resp, 422, "validation_failed")
    assert "password" in body["details"]
    assert (await query(database_url, "SELECT id FROM users")) == []


@pytest.mark.parametrize("length", [8, 1024])
async def test_password_length_at_the_bounds_is_accepted(client, length):
    # Not one letter repeated: the password policy refuses that at any length.
    password = ("q8#Vz!2mLw" * 103)[:length]
    assert len(password) == length
    await signup(client, "edge@example.com", password=password)
    await login(client, "edge@example.com", password=password)


async def test_multibyte_password_of_64_characters(client):
    password = ("éèêëàâäîïôöùûüçñøåæß" * 4)[:64]
    assert len(password.encode("utf-8")) == 128  # well past bcrypt's 72-byte limit
    await signup(client, "accent@example.com", password=password)
    await login(client, "accent@example.com", password=password)
    assert await auth_status(client, "accent@example.com", password[:63] + "e") == 401


async def test_passwords_sharing_the_first_72_bytes_are_distinct(client):
    prefix = ((PASSWORD + " ") * 3)[:72]
    assert len(prefix.encode("utf-8")) == 72
    await signup(client, "long@example.com", password=prefix + "first")
    # Plain bcrypt would truncate both to the same 72 bytes and let the other one in.
    assert await auth_status(client, "long@example.com", prefix + "second") == 401
    assert await auth_status(client, "long@example.com", prefix) == 401
    await login(client, "long@example.com", password=prefix + "first")


async def test_passwords_are_compared_exactly_as_typed(client):
    password = " open sesame 🔑🗝 "
    await signup(client, "exact@example.com", password=password)
    await login(client, "exact@example.com", password=password)
    # Nothing is stripped: each of these is another password.
    for other in (password.strip(), password.rstrip(), password + " ", "open sesame 🔑🗝"):
        assert await auth_status(client, "exact@example.com", other) == 401


async def assert_token_response(resp, settings) -> dict:
    """RFC 6749 5.1: the token body (with the scope granted, the user role's), and headers that
    forbid caching it."""
    body = await resp.json()
    assert resp.status == 200, body
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert body["scope"] == "profile todos"
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.access_token_ttl
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Pragma"] == "no-cache"
    return body


# --- POST /auth ---


async def test_login_returns_a_bearer_token_that_is_not_cached(client, settings):
    await signup(client, "owner@example.com")
    resp = await client.post("/auth", json={"username": "owner@example.com", "password": PASSWORD})
    body = await assert_token_response(resp, settings)
    me = await client.get("/users/me", headers=bearer(body["access_token"]))
    assert me.status == 200
    assert (await me.json())["email"] == "owner@example.com"


async def test_email_is_an_alias_for_username(client):
    await signup(client, "owner@example.com")
    resp = await client.post("/auth", json={"email": "owner@example.com", "password": PASSWORD})
    assert resp.status == 200
    assert (await resp.json())["token_type"] == "bearer"


@pytest.mark.parametrize(
    "identifiers",
    [{"username": "owner@example.com", "email": "owner@example.com"}, {}],
    ids=["both", "neither"],
)
async def test_login_needs_exactly_one_identifier(client, identifiers):
    await signup(client, "owner@example.com")
    resp = await client.post("/auth", json={**identifiers, "password": PASSWORD})
    await assert_error(resp, 422, "validation_failed")


async def test_login_identifier_is_case_insensitive(client):
    await signup(client, "Mixed.Case@Example.com")
    await login(client, "MIXED.CASE@EXAMPLE.COM")
    await login(client, "mixed.case@example.com")


# --- POST /auth/token (OAuth2 password grant) ---


async def test_password_grant_success_matches_auth(client, settings):
    await signup(client, "owner@example.com")
    resp = await client.post("/auth/token", data=form(grant()), headers=FORM)
    body = await assert_token_response(resp, settings)
    me = await client.get("/users/me", headers=bearer(body["access_token"]))
    assert me.status == 200


async def test_password_grant_wrong_password_is_invalid_grant(client):
    await signup(client, "owner@example.com")
    resp = await client.post("/auth/token", data=form(grant(password="not the password")), headers=FORM)
    await assert_error(resp, 400, "invalid_grant")


@pytest.mark.parametrize("missing", ["grant_type", "username", "password"])
async def test_password_grant_missing_parameter_is_invalid_request(client, missing):
    await signup(client, "owner@example.com")
    pairs = [(k, v) for k, v in grant() if k != missing]
    resp = await client.post("/auth/token", data=form(pairs), headers=FORM)
    await assert_error(resp, 400, "invalid_request")


async def test_other_grant_types_are_unsupported(client):
    await signup(client, "owner@example.com")
    pairs = [("grant_type", "authorization_code"), ("username", "owner@example.com"), ("password", PASSWORD)]
    resp = await client.post("/auth/token", data=form(pairs), headers=FORM)
    await assert_error(resp, 400, "unsupported_grant_type")
    # client_credentials is supported now (test_clients.py): a user's password is no client's.
    pairs[0] = ("grant_type", "client_credentials")
    resp = await client.post("/auth/token", data=form(pairs), headers=FORM)
    await assert_error(resp, 401, "invalid_client")


async def test_password_grant_refuses_a_json_body(client):
    await signup(client, "owner@example.com")
    resp = await client.post("/auth/token", json=dict(grant()))
    await assert_error(resp, 400, "invalid_request")


@pytest.mark.parametrize("repeated", ["grant_type", "username", "password"])
async def test_password_grant_refuses_a_repeated_parameter(client, repeated):
    # RFC 6749 3.2: request parameters must not be included more than once.
    await signup(client, "owner@example.com")
    pairs = grant() + [(k, v) for k, v in grant() if k == repeated]
    resp = await client.post("/auth/token", data=form(pairs), headers=FORM)
    await assert_error(resp, 400, "invalid_request")


async def test_password_grant_ignores_unknown_parameters(client):
    # scope is no longer unknown: it narrows the token (test_scopes.py), so it is one the user has.
    await signup(client, "owner@example.com")
    pairs = grant() + [("scope", "profile todos"), ("client_id", "some-client"), ("state", "xyz")]
    resp = await client.post("/auth/token", data=form(pairs), headers=FORM)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["token_type"] == "bearer"


async def test_password_grant_can_be_switched_off(aiohttp_client, base_settings):
    off = await aiohttp_client(create_app(base_settings.replace(password_grant=False)))
    await signup(off, "owner@example.com")
    resp = await off.post("/auth/token", data=form(grant()), headers=FORM)
    # The endpoint stays for the refresh grant; the password grant is not offered.
    await assert_error(resp, 400, "unsupported_grant_type")
    # /auth is unaffected.
    await login(off, "owner@example.com")


# --- /users/me ---


async def test_me_returns_the_callers_profile(client):
    user = await signup(client, "owner@example.com", first_name="Given", last_name="Family")
    resp = await client.get("/users/me", headers=bearer(await login(client, "owner@example.com")))
    assert resp.status == 200
    assert await resp.json() == user


async def test_patch_me_sets_and_clears_names(client, auth):
    resp = await client.patch("/users/me", json={"first_name": "Given", "last_name": "Family"}, headers=auth)
    assert resp.status == 200
    assert ((body := await resp.json())["first_name"], body["last_name"]) == ("Given", "Family")

    resp = await client.patch("/users/me", json={"first_name": None}, headers=auth)
    assert resp.status == 200
    assert ((body := await resp.json())["first_name"], body["last_name"]) == (None, "Family")

    resp = await client.get("/users/me", headers=auth)
    assert ((body := await resp.json())["first_name"], body["last_name"]) == (None, "Family")


async def test_patch_me_with_nothing_is_a_no_op(client, auth, database_url):
    await client.patch("/users/me", json={"first_name": "Given"}, headers=auth)
    before = await query(database_url, "SELECT * FROM users")
    resp = await client.patch("/users/me", json={}, headers=auth)
    assert resp.status == 200
    assert (await resp.json())["first_name"] == "Given"
    assert await query(database_url, "SELECT * FROM users") == before


@pytest.mark.parametrize(
    "body",
    [
        {"email": "other@example.com"},
        {"id": 999},
        {"first_name": "Changed", "email": "other@example.com"},
        {"first_name": "Changed", "id": 999},
    ],
    ids=["email", "id", "name-and-email", "name-and-id"],
)
async def test_patch_me_refuses_email_and_id_and_changes_nothing(client, auth, database_url, body):
    before = await query(database_url, "SELECT * FROM users")
    resp = await client.patch("/users/me", json=body, headers=auth)
    await assert_error(resp, 422, "validation_failed")
    assert await query(database_url, "SELECT * FROM users") == before


# --- POST /users/me/password ---


async def test_change_password(client, auth):
    new = "a brand new passphrase"
    body = {"current_password": PASSWORD, "new_password": new}
    resp = await client.post("/users/me/password", json=body, headers=auth)
    assert resp.status == 204, await resp.text()
    assert await auth_status(client, "owner@example.com", PASSWORD) == 401
    await login(client, "owner@example.com", password=new)


async def test_change_password_with_wrong_current_is_403_and_changes_nothing(client, auth, database_url):
    before = await stored_hash(database_url, "owner@example.com")
    body = {"current_password": "not the password", "new_password": "whatever else"}
    resp = await client.post("/users/me/password", json=body, headers=auth)
    await assert_error(resp, 403, "invalid_current_password")
    assert await stored_hash(database_url, "owner@example.com") == before
    assert await auth_status(client, "owner@example.com", "whatever else") == 401
    await login(client, "owner@example.com")


async def test_change_password_to_a_short_one_is_422(client, auth, database_url):
    before = await stored_hash(database_url, "owner@example.com")
    change = {"current_password": PASSWORD, "new_password": "short"}
    resp = await client.post("/users/me/password", json=change, headers=auth)
    body = await assert_error(resp, 422, "validation_failed")
    assert "new_password" in body["details"]
    assert await stored_hash(database_url, "owner@example.com") == before
    await login(client, "owner@example.com")


# --- DELETE /users/me ---


async def test_delete_me_removes_the_user_and_their_todos(client, auth, database_url):
    for text in ("one", "two", "three"):
        resp = await client.post("/todos", json={"text": text}, headers=auth)
        assert resp.status == 201, await resp.text()
    await signup(client, "bystander@example.com")
    other = bearer(await login(client, "bystander@example.com"))
    assert (await client.post("/todos", json={"text": "theirs"}, headers=other)).status == 201
    me = await (await client.get("/users/me", headers=auth)).json()

    resp = await client.delete("/users/me", headers=auth)
    assert resp.status == 204

    assert await query(database_url, "SELECT id FROM users WHERE id = $1", me["id"]) == []
    assert await query(database_url, "SELECT id FROM todos WHERE owner_id = $1", me["id"]) == []
    # Another user's todos stay.
    assert [r["text"] for r in await query(database_url, "SELECT text FROM todos")] == ["theirs"]
    # The old token and the old password are both dead.
    await assert_invalid_token(client, auth["Authorization"].removeprefix("Bearer "))
    assert await auth_status(client, "owner@example.com", PASSWORD) == 401


# --- bearer checks (RFC 6750) ---


class TestBearer:
    async def test_no_credentials_is_401_with_a_bare_challenge(self, client):
        resp = await client.get("/users/me")
        await assert_error(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"] == CHALLENGE

    async def test_a_token_forged_the_service_way_is_accepted(self, client, settings, user_token):
        # Guards the forging helper: the negative cases below differ from this in one thing only.
        user_id = jwt.decode(user_token, options={"verify_signature": False})["sub"]
        resp = await client.get("/users/me", headers=bearer(forge(settings, user_token)))
        assert resp.status == 200
        assert (await resp.json())["id"] == int(user_id)

    async def test_garbage_token(self, client, user_token):
        await assert_invalid_token(client, "not-a-jwt")

    async def test_tampered_payload(self, client, user_token):
        victim_id = (await signup(client, "victim@example.com"))["id"]
        header, payload, signature = user_token.split(".")
        claims = json.loads(b64url_decode(payload))
        claims["sub"] = str(victim_id)
        tampered = ".".join([header, b64url(json.dumps(claims).encode()), signature])
        await assert_invalid_token(client, tampered)

    async def test_flipped_signature_character(self, client, user_token):
        header, payload, signature = user_token.split(".")
        # Not the last character: its low bits are padding and may decode to the same bytes.
        i = len(signature) // 2
        flipped = signature[:i] + ("A" if signature[i] != "A" else "B") + signature[i + 1 :]
        await assert_invalid_token(client, ".".join([header, payload, flipped]))

    async def test_expired_token(self, client, settings, user_token):
        past = int(time.time()) - settings.token_leeway - 60
        await assert_invalid_token(client, forge(settings, user_token, iat=past - 300, exp=past))

    async def test_alg_none_token(self, client, settings, user_token):
        user_id = jwt.decode(user_token, options={"verify_signature": False})["sub"]
        now = int(time.time())
        header = {"alg": "none", "typ": "at+jwt"}
        claims = {
            "iss": settings.issuer,
            "sub": user_id,
            "aud": settings.audience,
            "iat": now,
            "exp": now + 300,
            "jti": "x",
        }
        token = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode()) + "."
        await assert_invalid_token(client, token)

    async def test_hmac_algorithm_with_the_service_secret(self, client, settings, user_token):
        await assert_invalid_token(client, forge(settings, user_token, algorithm="HS512", key=settings.token_secret))

    @pytest.mark.parametrize("claim", ["aud", "iss"])
    async def test_wrong_audience_or_issuer(self, client, settings, user_token, claim):
        await assert_invalid_token(client, forge(settings, user_token, **{claim: "someone-else"}))

    @pytest.mark.parametrize("claim", ["jti", "exp", "iat", "iss", "aud"])
    async def test_missing_required_claim(self, client, settings, user_token, claim):
        await assert_invalid_token(client, forge(settings, user_token, drop=(claim,)))

    async def test_missing_sub(self, client, settings, user_token):
        await assert_invalid_token(client, forge(settings, user_token, drop=("sub",)))

    @pytest.mark.parametrize("typ", ["JWT", "jwt", "refresh+jwt"])
    async def test_wrong_typ_header(self, client, settings, user_token, typ):
        await assert_invalid_token(client, forge(settings, user_token, typ=typ))

    async def test_another_key_under_our_kid(self, client, settings, user_token):
        await assert_invalid_token(client, forge(settings, user_token, key=Ed25519PrivateKey.generate()))

    async def test_basic_scheme_is_401_without_error_details(self, client, user_token):
        # RFC 6750 3.1: an unsupported authentication method is treated like no credentials:
        # the challenge SHOULD NOT carry an error code.
        basic = "Basic " + base64.b64encode(f"owner@example.com:{PASSWORD}".encode()).decode()
        resp = await client.get("/users/me", headers={"Authorization": basic})
        await assert_error(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"] == CHALLENGE

    async def test_token_in_the_query_string_is_400(self, client, auth, user_token):
        resp = await client.get("/users/me", params={"access_token": user_token}, headers=auth)
        await assert_error(resp, 400, "invalid_request")

    async def test_valid_token_of_a_deleted_user(self, client, user_token, database_url):
        await query(database_url, "DELETE FROM users WHERE email = 'owner@example.com'")
        await assert_invalid_token(client, user_token)


# --- hash upgrade ---


async def test_hash_is_upgraded_to_the_configured_cost_on_login(client, aiohttp_client, base_settings, database_url):
    await signup(client, "owner@example.com")
    assert (await stored_hash(database_url, "owner@example.com")).startswith("$2b$04$")

    # The same database and secrets, served by an app configured for a higher cost.
    stronger = await aiohttp_client(create_app(base_settings.replace(bcrypt_rounds=5)))
    await login(stronger, "owner@example.com")
    upgraded = await stored_hash(database_url, "owner@example.com")
    assert upgraded.startswith("$2b$05$")

    await login(stronger, "owner@example.com")
    assert await stored_hash(database_url, "owner@example.com") == upgraded  # no needless re-hash
    assert await auth_status(stronger, "owner@example.com", "not the password") == 401
