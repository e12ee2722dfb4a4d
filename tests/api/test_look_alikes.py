"""One person, one account: look-alike emails at signup and login, over real HTTP and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import bcrypt
import pytest
from aiohttp.test_utils import TestClient
from helpers import PASSWORD, assert_error, bearer, login, signup

ANN = "ann.h@example.com"
LOOK_ALIKES_409 = {
    "fullwidth local part": "ａｎｎ.ｈ@example.com",
    "fullwidth domain": "ann.h@ｅｘａｍｐｌｅ.ｃｏｍ",
    "U+217F in the domain": "ann.h@example.co\u217f",
    "capitals": "Ann.H@Example.com",
    "Cyrillic а": "\u0430nn.h@example.com",
    "digit one for l": "ann.h@examp1e.com",
    "rn for m": "ann.h@exarnple.com",
    "capitals in the domain": "ann.h@EXAMPLE.COM",
}
INVISIBLE_422 = {
    "U+200B in the local part": "ann\u200b.h@example.com",
    "U+200B in the domain": "ann.h@exa\u200bmple.com",
    "U+00AD in the local part": "ann.h\u00ad@example.com",
    "U+00AD in the domain": "ann.h@example\u00ad.com",
    "U+115F": "\u115fann.h@example.com",
    "U+3164": "ann.h\u3164@example.com",
    "U+FE0F": "ann.h\ufe0f@example.com",
    "U+2066": "ann.h\u2066@example.com",
}


async def users_rows(db: asyncpg.Connection) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await db.fetch("SELECT id, email, email_key, email_skeleton, password_hash, updated_at FROM users ORDER BY id")]


async def me(client: TestClient, token: str) -> dict[str, Any]:
    resp = await client.get("/users/me", headers=bearer(token))
    assert resp.status == 200
    return await resp.json()


@pytest.mark.parametrize("address", LOOK_ALIKES_409.values(), ids=LOOK_ALIKES_409)
async def test_a_look_alike_of_an_account_is_taken(client, db, address):
    await signup(client, ANN)
    before = await users_rows(db)
    resp = await client.post("/users", json={"email": address, "password": "another password"})
    await assert_error(resp, 409, "email_taken")
    assert await users_rows(db) == before
    await login(client, ANN)  # ann keeps her account and her password


@pytest.mark.parametrize("address", INVISIBLE_422.values(), ids=INVISIBLE_422)
async def test_invisible_characters_are_refused(client, db, address):
    await signup(client, ANN)
    before = await users_rows(db)
    resp = await client.post("/users", json={"email": address, "password": "another password"})
    body = await assert_error(resp, 422, "validation_failed")
    (message,) = body["details"]["email"]
    assert "invisible, format or control characters" in message and "U+" in message
    assert await users_rows(db) == before
    # Not only while ann exists.
    await client.delete("/users/me", headers=bearer(await login(client, ANN)))
    resp = await client.post("/users", json={"email": address, "password": "another password"})
    await assert_error(resp, 422, "validation_failed")


async def test_the_address_is_stored_normalised(client, db):
    user = await signup(client, "Ｂｏｂ@ＥＸＡＭＰＬＥ.com")
    assert user["email"] == "Bob@EXAMPLE.com"
    row = await db.fetchrow("SELECT email, email_key, email_skeleton FROM users")
    assert tuple(row) == ("Bob@EXAMPLE.com", "bob@example.com", "bob@exarnple.corn")
    user = await signup(client, "ann@xn--bcher-kva.de")
    assert user["email"] == "ann@bücher.de"
    assert await db.fetchval("SELECT email_key FROM users WHERE id = $1", user["id"]) == "ann@xn--bcher-kva.de"
    for same in ("ann@bücher.de", "ann@BÜCHER.de", "ann@xn--bcher-kva.de"):
        resp = await client.post("/users", json={"email": same, "password": PASSWORD})
        await assert_error(resp, 409, "email_taken")


@pytest.mark.parametrize("identifier", ["ＡＮＮ.Ｈ@example.com", "ann.h@ｅｘａｍｐｌｅ.ｃｏｍ", "ANN.H@example.co\u217f", "ann\u200b.h@example.com"])
async def test_a_look_alike_typed_at_login_finds_the_account(client, db, identifier):
    ann = await signup(client, ANN)
    resp = await client.post("/auth", json={"username": identifier, "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    assert (await me(client, (await resp.json())["access_token"]))["id"] == ann["id"]
    form = {"grant_type": "password", "username": identifier, "password": PASSWORD}
    resp = await client.post("/auth/token", data=form)
    assert resp.status == 200, await resp.text()
    # Failures count against ann's budget whatever the spelling: one key, not one per variant.
    resp = await client.post("/auth", json={"email": identifier, "password": "not the password"})
    await assert_error(resp, 401, "invalid_credentials")
    assert [r["identifier"] for r in await db.fetch("SELECT DISTINCT identifier FROM login_backoff")] == [ANN]


async def test_a_skeleton_look_alike_typed_at_login_is_nobody(client):
    """Look-alikes share a skeleton, not a key: typing ann's address with a digit one is an
    unknown user, even with ann's password."""
    await signup(client, ANN)
    resp = await client.post("/auth", json={"username": "ann.h@examp1e.com", "password": PASSWORD})
    await assert_error(resp, 401, "invalid_credentials")


@pytest.mark.parametrize("identifier", ["not an email", "ann.h", "\u200b", "ann.h@", "@@", "a@b", "ann\x7f@example.com", "\ufdfa" * 200])
async def test_an_identifier_that_is_no_address_is_an_unknown_user(client, monkeypatch, identifier):
    await signup(client, ANN)
    checks: list[int] = []
    checkpw = bcrypt.checkpw

    def counted(*args: Any) -> bool:
        checks.append(1)
        return checkpw(*args)

    monkeypatch.setattr(bcrypt, "checkpw", counted)
    for sent in (identifier, "nobody@example.com"):
        checks.clear()
        resp = await client.post("/auth", json={"username": sent, "password": PASSWORD})
        body = await assert_error(resp, 401, "invalid_credentials")
        assert checks == [1], sent  # the same bcrypt check as for an unknown user
        assert body == {"error": "invalid_credentials", "message": "The email or password is not correct."}


async def test_parallel_signups_of_look_alikes_make_one_account(client, db):
    variants = list(LOOK_ALIKES_409.values()) + [ANN]
    for round_ in range(3):
        await db.execute("TRUNCATE users RESTART IDENTITY CASCADE")
        resps = await asyncio.gather(
            *(client.post("/users", json={"email": email, "password": f"{PASSWORD} {i}"}) for i, email in enumerate(variants))
        )
        statuses = sorted(r.status for r in resps)
        assert statuses == [201] + [409] * (len(variants) - 1), (round_, statuses)
        for resp in resps:
            if resp.status == 409:
                await assert_error(resp, 409, "email_taken")
        assert await db.fetchval("SELECT count(*) FROM users") == 1


async def test_a_signup_never_fails_on_what_it_was_sent(client):
    """Whatever the address, signup answers 201, 409 or 422, never a server error."""
    weird = [
        "\ufdfa" * 40 + "@example.com",  # NFKC makes 18 characters of each
        "%" * 200 + "@example.com",  # each % has a 3-character prototype
        "\u1019\u103b\u1014\u103a" * 30 + "@example.com",
        "a@" + ".".join(["\u102a" * 20] * 4) + ".com",
        "a@xn--zzzz.com",
        "\U0001f600@example.com",
        "a@\u0627\u0644\u0639\u0631\u0628\u064a\u0629a.com",  # right-to-left and left-to-right in a label
        "\u0301a@example.com",
        "x" * 64 + "@" + "y" * 63 + ".com",
        "ﬁ@example.com",
    ]
    for email in weird:
        resp = await client.post("/users", json={"email": email, "password": PASSWORD})
        assert resp.status in (201, 409, 422), (email, resp.status, await resp.text())
