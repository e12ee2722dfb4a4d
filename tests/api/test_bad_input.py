"""Bad input gets a clear JSON error and changes nothing; nothing a client sends gives a 500."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from helpers import PASSWORD, bearer, login, signup

from authsvc.app import create_app
from authsvc.settings import Settings

JSON = "application/json"
LEAKS = ("Traceback", "password_hash", "$2b$")
SNAKE_CASE = re.compile(r"^[a-z]+(_[a-z]+)*$")
NEW_PASSWORD = "a brand new passphrase"

# name -> (method, path, a body the endpoint accepts). {id} is a real todo of the caller.
ENDPOINTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "signup": (
        "POST",
        "/users",
        {"email": "new@example.com", "password": PASSWORD, "first_name": "F", "last_name": "L"},
    ),
    "login": ("POST", "/auth", {"username": "owner@example.com", "password": PASSWORD}),
    "patch_me": ("PATCH", "/users/me", {"first_name": "F", "last_name": "L"}),
    "change_password": ("POST", "/users/me/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    "create_todo": ("POST", "/todos", {"text": "water the plants", "completed": False}),
    "patch_todo": ("PATCH", "/todos/{id}", {"text": "water the plants", "completed": True}),
    "put_todo": ("PUT", "/todos/{id}", {"text": "water the plants", "completed": True}),
}
NAMES = list(ENDPOINTS)

STRING_FIELDS = [
    ("signup", "email"),
    ("signup", "password"),
    ("signup", "first_name"),
    ("signup", "last_name"),
    ("login", "username"),
    ("login", "email"),
    ("login", "password"),
    ("patch_me", "first_name"),
    ("patch_me", "last_name"),
    ("change_password", "current_password"),
    ("change_password", "new_password"),
    ("create_todo", "text"),
    ("patch_todo", "text"),
    ("put_todo", "text"),
]
BOOLEAN_FIELDS = [("create_todo", "completed"), ("patch_todo", "completed"), ("put_todo", "completed")]


def body_with(name: str, field: str, value: Any) -> dict[str, Any]:
    body = dict(ENDPOINTS[name][2])
    if name == "login" and field == "email":
        del body["username"]  # /auth takes exactly one of username or email
    body[field] = value
    return body


def raw_with(name: str, field: str, raw_value: bytes) -> bytes:
    """An otherwise accepted body whose `field` is the given raw JSON text (maybe not JSON at all)."""
    placeholder = "__raw_value__"
    text = json.dumps(body_with(name, field, placeholder)).encode()
    return text.replace(f'"{placeholder}"'.encode(), raw_value)


def first_string_field(name: str) -> str:
    return next(field for endpoint, field in STRING_FIELDS if endpoint == name)


# --- checks shared by every test ---


def check_headers_and_leaks(resp: ClientResponse, text: str) -> None:
    assert resp.status < 500, text
    assert resp.headers.get("Cache-Control") == "no-store"
    assert resp.headers.get("X-Content-Type-Options") == "nosniff"
    assert resp.headers.get("Server") == "authsvc"  # no versions of what it runs on
    assert resp.headers.get("Access-Control-Allow-Origin") != "*"
    for leak in LEAKS:
        assert leak not in text


async def error_body(resp: ClientResponse) -> dict[str, Any]:
    """The response's JSON error body, after the checks every error must pass."""
    text = await resp.text()
    check_headers_and_leaks(resp, text)
    assert resp.content_type == JSON, text
    body = json.loads(text)
    assert SNAKE_CASE.match(body["error"]), body
    assert isinstance(body["message"], str) and body["message"], body
    assert isinstance(body.get("details", {}), dict), body
    return body


def assert_field_errors(body: dict[str, Any], *fields: str) -> None:
    """A 422 naming exactly these fields, each with readable messages."""
    assert body["error"] == "validation_failed", body
    assert set(body["details"]) == set(fields), body
    for field in fields:
        messages = body["details"][field]
        assert messages and all(isinstance(m, str) and m for m in messages), body


async def snapshot(db: asyncpg.Connection) -> dict[str, list[str]]:
    """Every row of every table, to compare before and after a refused request."""
    tables = await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    return {
        t["table_name"]: sorted(repr(tuple(row)) for row in await db.fetch(f'SELECT * FROM "{t["table_name"]}"'))
        for t in tables
    }


# --- fixtures ---


@pytest.fixture
async def todo_id(client: TestClient, auth: dict[str, str]) -> int:
    resp = await client.post("/todos", json={"text": "original", "completed": False}, headers=auth)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


Attempt = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]


@pytest.fixture
def attempt(client: TestClient, auth: dict[str, str], todo_id: int, db: asyncpg.Connection) -> Attempt:
    """Send a body to an endpoint as the signed-in owner; return (status, error body).

    Every call checks the rule itself: a JSON error, no 500, no leak, and the database exactly as before.
    """

    async def send(
        name: str,
        data: bytes | AsyncIterator[bytes],
        content_type: str | None = JSON,
        extra_headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        method, path, _ = ENDPOINTS[name]
        headers = {**auth, **(extra_headers or {})}
        if content_type is not None:
            headers["Content-Type"] = content_type
        before = await snapshot(db)
        resp = await client.request(
            method,
            path.format(id=todo_id),
            data=data,
            headers=headers,
            skip_auto_headers=() if content_type is not None else ("Content-Type",),
        )
        body = await error_body(resp)
        assert await snapshot(db) == before, f"{name} changed the database on {resp.status}"
        return resp.status, body

    return send


# --- unreadable bodies: 400 invalid_json ---
# Each test is parametrised over the endpoints and loops over the variants of one kind of bad input.

MALFORMED = [b'{"a":', b"", b" \r\n\t ", b'{"text": "x"} trailing', b"{'single': 'quotes'}", b'{"a": 1,}']


@pytest.mark.parametrize("name", NAMES)
async def test_malformed_empty_or_blank_json_is_400_invalid_json(attempt: Attempt, name: str) -> None:
    for raw in MALFORMED:
        status, body = await attempt(name, raw)
        assert (status, body["error"]) == (400, "invalid_json"), raw


@pytest.mark.parametrize("name", NAMES)
async def test_invalid_utf8_is_400_invalid_json(attempt: Attempt, name: str) -> None:
    # Not UTF-8 at all, an overlong "/", a UTF-8-encoded surrogate, a cut-off sequence.
    for bad_bytes in (b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82"):
        raw = raw_with(name, first_string_field(name), b'"abc' + bad_bytes + b'defgh"')
        status, body = await attempt(name, raw)
        assert (status, body["error"]) == (400, "invalid_json"), bad_bytes


@pytest.mark.parametrize("name", NAMES)
async def test_nan_and_infinity_literals_are_400_invalid_json(attempt: Attempt, name: str) -> None:
    # Python's json accepts these by default; they are not JSON (RFC 8259 section 6).
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        status, body = await attempt(name, raw_with(name, first_string_field(name), literal))
        assert (status, body["error"]) == (400, "invalid_json"), literal


REFUSED = {(400, "invalid_json"), (422, "validation_failed")}


@pytest.mark.parametrize("name", NAMES)
async def test_deeply_nested_json_is_refused_without_500(attempt: Attempt, name: str) -> None:
    # All within the 16 KiB limit. Refusing to parse (400) or refusing the type (422) are both fine.
    field = first_string_field(name)
    for raw in (
        raw_with(name, field, b"[" * 5000 + b"]" * 5000),
        raw_with(name, field, b'{"a":' * 2000 + b"1" + b"}" * 2000),
        b"[" * 8000 + b"]" * 8000,
    ):
        status, body = await attempt(name, raw)
        assert (status, body["error"]) in REFUSED, raw[:20]


@pytest.mark.parametrize("name", NAMES)
async def test_huge_numbers_are_refused_without_500(attempt: Attempt, name: str) -> None:
    # Python turns 1e999 into inf and refuses integers of more than 4300 digits with ValueError.
    for number in (b"1e999", b"-1e999", b"9" * 5000):
        status, body = await attempt(name, raw_with(name, first_string_field(name), number))
        assert (status, body["error"]) in REFUSED, number[:20]


# --- wrong media type: 415 ---

WRONG_TYPES = [
    None,
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/json; charset=latin-1",
    "text/json",
]


@pytest.mark.parametrize("name", NAMES)
async def test_missing_or_wrong_content_type_is_415(attempt: Attempt, name: str) -> None:
    # The body itself would be accepted: only the declared type is wrong.
    raw = json.dumps(ENDPOINTS[name][2]).encode()
    for content_type in WRONG_TYPES:
        status, body = await attempt(name, raw, content_type=content_type)
        assert (status, body["error"]) == (415, "unsupported_media_type"), content_type


# --- too large: 413 ---


def oversized(name: str) -> bytes:
    """20 KiB of valid JSON: an accepted body with one string field blown up."""
    body = json.dumps(body_with(name, first_string_field(name), "x" * 20 * 1024)).encode()
    assert len(body) > 20 * 1024
    return body


async def in_chunks(raw: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(raw), 1024):
        yield raw[start : start + 1024]


@pytest.mark.parametrize("name", NAMES)
async def test_body_over_limit_is_413(attempt: Attempt, settings: Settings, name: str) -> None:
    assert settings.max_body_bytes == 16 * 1024
    status, body = await attempt(name, oversized(name))
    assert (status, body["error"]) == (413, "payload_too_large")
    # Chunked, there is no Content-Length to check up front: the limit must hold while reading.
    status, body = await attempt(name, in_chunks(oversized(name)))
    assert (status, body["error"]) == (413, "payload_too_large")


@pytest.mark.parametrize("name", NAMES)
async def test_gzip_bomb_is_413(attempt: Attempt, name: str) -> None:
    # Under 1 KiB on the wire, 200 KB once decompressed: the limit is on what the server reads.
    bomb = gzip.compress(json.dumps(body_with(name, first_string_field(name), "x" * 200_000)).encode())
    assert len(bomb) < 1024
    status, body = await attempt(name, bomb, extra_headers={"Content-Encoding": "gzip"})
    assert (status, body["error"]) == (413, "payload_too_large")


@pytest.mark.parametrize("name", NAMES)
async def test_corrupt_compressed_body_is_400(attempt: Attempt, name: str) -> None:
    for encoding in ("gzip", "deflate"):
        status, body = await attempt(name, b"this is not compressed", extra_headers={"Content-Encoding": encoding})
        # The body cannot be read: a client error that says so.
        assert (status, body["error"]) == (400, "invalid_body"), encoding


# --- not an object, unknown or mistyped fields: 422 ---


@pytest.mark.parametrize("name", NAMES)
async def test_top_level_array_string_number_or_null_is_422(attempt: Attempt, name: str) -> None:
    # Even a list holding an accepted object is refused.
    for value in ([ENDPOINTS[name][2]], [], "text", 42, 1.5, None, True):
        status, body = await attempt(name, json.dumps(value).encode())
        assert (status, body["error"]) == (422, "validation_failed"), value


@pytest.mark.parametrize("name", NAMES)
async def test_unknown_field_is_422_naming_it(attempt: Attempt, name: str) -> None:
    # Fields a client may not set (id, owner) are refused, not silently dropped.
    for unknown in ("id", "owner_id", "role", "is_admin"):
        status, body = await attempt(name, json.dumps(body_with(name, unknown, 1)).encode())
        assert status == 422, unknown
        assert_field_errors(body, unknown)


@pytest.mark.parametrize(("name", "field"), STRING_FIELDS)
async def test_wrong_type_for_string_field_is_422_naming_it(attempt: Attempt, name: str, field: str) -> None:
    for value in (123, 1.5, True, {"a": "b"}, ["a"]):
        status, body = await attempt(name, json.dumps(body_with(name, field, value)).encode())
        assert status == 422, value
        assert_field_errors(body, field)


@pytest.mark.parametrize(("name", "field"), BOOLEAN_FIELDS)
async def test_wrong_type_for_boolean_field_is_422_naming_it(attempt: Attempt, name: str, field: str) -> None:
    # JSON true or false only: no "true" strings, no 0/1, no null.
    for value in ("true", 1, 0, None, [True], {"a": True}):
        status, body = await attempt(name, json.dumps(body_with(name, field, value)).encode())
        assert status == 422, value
        assert_field_errors(body, field)


async def test_every_wrong_field_is_named_at_once(attempt: Attempt) -> None:
    raw = json.dumps({"email": 5, "password": ["x"], "first_name": {"a": 1}, "last_name": 2.5}).encode()
    status, body = await attempt("signup", raw)
    assert status == 422
    assert_field_errors(body, "email", "password", "first_name", "last_name")


@pytest.mark.parametrize(("name", "field"), STRING_FIELDS)
async def test_nul_or_lone_surrogate_in_string_is_422(attempt: Attempt, name: str, field: str) -> None:
    # json.dumps writes these as \u0000 / \ud800 escapes: valid JSON text, but PostgreSQL
    # cannot store NUL and UTF-8 cannot encode a lone surrogate.
    for bad in ("\x00", "\ud800", "\udfff"):
        value = f"abcd{bad}efgh@example.com" if field in ("email", "username") else f"abcd{bad}efgh"
        raw = json.dumps(body_with(name, field, value)).encode()
        assert b"\\u" in raw and raw.isascii()
        status, body = await attempt(name, raw)
        assert status == 422, repr(bad)
        assert_field_errors(body, field)


# --- SQL metacharacters are data ---

SQL_EMAIL = "x'or'1'='1@example.com"
SQL_FIRST = "Robert'); DROP TABLE users;--"
SQL_LAST = '" OR ""=" ; SELECT * FROM users --'
SQL_PASSWORD = "' OR '1'='1'; --"


async def test_sql_metacharacters_in_signup_are_stored_verbatim(
    client: TestClient, auth: dict[str, str], db: asyncpg.Connection
) -> None:
    user = await signup(client, SQL_EMAIL, SQL_PASSWORD, first_name=SQL_FIRST, last_name=SQL_LAST)
    assert (user["email"], user["first_name"], user["last_name"]) == (SQL_EMAIL, SQL_FIRST, SQL_LAST)
    token = await login(client, SQL_EMAIL, SQL_PASSWORD)
    resp = await client.get("/users/me", headers=bearer(token))
    text = await resp.text()
    check_headers_and_leaks(resp, text)
    assert json.loads(text)["first_name"] == SQL_FIRST
    row = await db.fetchrow("SELECT email, first_name, last_name FROM users WHERE id = $1", user["id"])
    assert tuple(row) == (SQL_EMAIL, SQL_FIRST, SQL_LAST)
    assert await db.fetchval("SELECT count(*) FROM users") == 2  # the table is still there, with both users


@pytest.mark.parametrize(
    "identifier",
    ["' OR '1'='1", "owner@example.com' --", "' OR 1=1; DROP TABLE users; --", "%@example.com", "_wner@example.com"],
)
async def test_sql_metacharacters_in_login_match_no_account(
    client: TestClient, auth: dict[str, str], db: asyncpg.Connection, identifier: str
) -> None:
    # The owner's real password: only an injected match or a LIKE-style wildcard could let it in.
    resp = await client.post("/auth", json={"username": identifier, "password": PASSWORD})
    body = await error_body(resp)
    assert (resp.status, body["error"]) == (401, "invalid_credentials")
    assert await db.fetchval("SELECT count(*) FROM users") == 1


async def test_sql_metacharacters_in_todos_names_and_passwords_are_data(
    client: TestClient, auth: dict[str, str], db: asyncpg.Connection
) -> None:
    await signup(client, "other@example.com", first_name="unchanged")
    texts = ["'); DELETE FROM todos; --", "'; DROP TABLE todos; -- \" \\ %_ $1"]
    for text in texts:
        resp = await client.post("/todos", json={"text": text}, headers=auth)
        assert resp.status == 201
        created = await resp.json()
        assert created["text"] == text
        resp = await client.get(f"/todos/{created['id']}", headers=auth)
        assert (await resp.json())["text"] == text

    resp = await client.patch("/users/me", json={"last_name": "x' WHERE 1=1; --"}, headers=auth)
    assert resp.status == 200
    assert (await resp.json())["last_name"] == "x' WHERE 1=1; --"

    resp = await client.post(
        "/users/me/password", json={"current_password": PASSWORD, "new_password": SQL_PASSWORD}, headers=auth
    )
    assert resp.status == 204
    await login(client, "owner@example.com", SQL_PASSWORD)

    # Only the caller's own rows changed.
    other = await db.fetchrow("SELECT first_name, last_name FROM users WHERE email = 'other@example.com'")
    assert tuple(other) == ("unchanged", None)
    # The table is still there and holds the texts as sent.
    assert [r["text"] for r in await db.fetch("SELECT text FROM todos ORDER BY id")] == texts


# --- routing (ids that name no todo: tests/api/test_todos.py) ---


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("GET", "/users/nobody"), ("POST", "/todos/1/done"), ("GET", "/auth/token/x"), ("GET", "/")],
)
async def test_unknown_route_is_404_json_without_token(client: TestClient, method: str, path: str) -> None:
    resp = await client.request(method, path)
    body = await error_body(resp)
    assert (resp.status, body["error"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/users", {"POST"}),
        ("DELETE", "/auth", {"POST"}),
        ("GET", "/auth", {"POST"}),
        ("POST", "/healthz", {"GET"}),
        ("PUT", "/users/me", {"GET", "PATCH", "DELETE"}),
        ("GET", "/users/me/password", {"POST"}),
        ("DELETE", "/todos", {"GET", "POST"}),
        ("POST", "/todos/1", {"GET", "PATCH", "PUT", "DELETE"}),
        ("TRACE", "/users", {"POST"}),
    ],
)
async def test_wrong_method_is_405_json_with_allow(
    client: TestClient, method: str, path: str, allowed: set[str]
) -> None:
    # No token sent: a route that cannot answer this method says so before asking who you are.
    resp = await client.request(method, path)
    body = await error_body(resp)
    assert (resp.status, body["error"]) == (405, "method_not_allowed")
    allow = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert allowed <= allow and method not in allow


# --- health and response headers ---


async def test_healthz_is_ok(client: TestClient) -> None:
    resp = await client.get("/healthz")
    text = await resp.text()
    check_headers_and_leaks(resp, text)
    assert resp.status == 200
    assert json.loads(text) == {"status": "ok"}


async def test_readyz_is_200_when_the_database_answers(client: TestClient) -> None:
    resp = await client.get("/readyz")
    text = await resp.text()
    check_headers_and_leaks(resp, text)
    assert resp.status == 200
    assert resp.content_type == JSON


async def test_every_kind_of_response_carries_the_safety_headers_and_no_secrets(
    client: TestClient, auth: dict[str, str], todo_id: int
) -> None:
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/users", {"json": {"email": "second@example.com", "password": PASSWORD}}),
        ("POST", "/auth", {"json": {"email": "second@example.com", "password": PASSWORD}}),
        ("GET", "/users/me", {"headers": auth}),
        ("PATCH", "/users/me", {"json": {"first_name": "F"}, "headers": auth}),
        ("GET", "/todos", {"headers": auth}),
        ("GET", f"/todos/{todo_id}", {"headers": auth}),
        ("DELETE", f"/todos/{todo_id}", {"headers": auth}),
        ("GET", "/users/me", {}),  # 401
        ("POST", "/auth", {"json": {"email": "owner@example.com", "password": "wrong password"}}),  # 401
        ("POST", "/users", {"json": {"email": "owner@example.com", "password": PASSWORD}}),  # 409
        ("GET", "/nope", {}),  # 404
        ("PUT", "/users", {}),  # 405
        ("POST", "/todos", {"data": b"x" * 20 * 1024, "headers": {**auth, "Content-Type": JSON}}),  # 413
        ("POST", "/todos", {"data": b"{}", "headers": auth}),  # 415
        ("POST", "/todos", {"json": {}, "headers": auth}),  # 422
    ]
    statuses = set()
    for method, path, kwargs in calls:
        resp = await client.request(method, path, **kwargs)
        check_headers_and_leaks(resp, await resp.text())
        statuses.add(resp.status)
    assert statuses == {200, 201, 204, 401, 404, 405, 409, 413, 415, 422}


# --- CORS ---

ALLOWED_ORIGIN = "https://app.example.com"


@pytest.fixture
async def cors_client(aiohttp_client: Any, base_settings: Settings) -> TestClient:
    return await aiohttp_client(create_app(base_settings.replace(cors_origins=(ALLOWED_ORIGIN,))))


def preflight_headers(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Authorization",
    }


async def test_cors_preflight_from_listed_origin_is_allowed_without_credentials(cors_client: TestClient) -> None:
    resp = await cors_client.options("/users/me", headers=preflight_headers(ALLOWED_ORIGIN))
    check_headers_and_leaks(resp, await resp.text())
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
    assert resp.headers.get("Access-Control-Allow-Credentials") != "true"


async def test_cors_simple_request_from_listed_origin_gets_allow_origin(cors_client: TestClient) -> None:
    resp = await cors_client.get("/healthz", headers={"Origin": ALLOWED_ORIGIN})
    check_headers_and_leaks(resp, await resp.text())
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert resp.headers.get("Access-Control-Allow-Credentials") != "true"


async def test_cors_unlisted_origin_gets_no_allow_origin(cors_client: TestClient) -> None:
    evil = "https://evil.example"
    resp = await cors_client.get("/healthz", headers={"Origin": evil})
    check_headers_and_leaks(resp, await resp.text())
    assert resp.status == 200  # the browser, not the server, withholds the answer
    assert "Access-Control-Allow-Origin" not in resp.headers

    # The preflight is refused, as a JSON error like any other.
    resp = await cors_client.options("/users/me", headers=preflight_headers(evil))
    body = await error_body(resp)
    assert (resp.status, body["error"]) == (403, "forbidden")
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_cors_app_still_answers_bad_input_with_json_errors(cors_client: TestClient) -> None:
    # Routes wrapped by aiohttp-cors keep the same error rules, and never allow "*".
    headers = {"Origin": ALLOWED_ORIGIN}
    for method, path, expected in [
        ("PUT", "/users", (405, "method_not_allowed")),
        ("GET", "/nope", (404, "not_found")),
        ("GET", "/users/me", (401, "unauthorized")),
    ]:
        resp = await cors_client.request(method, path, headers=headers)
        body = await error_body(resp)
        assert (resp.status, body["error"]) == expected
    resp = await cors_client.post("/users", data=b'{"a":', headers={**headers, "Content-Type": JSON})
    body = await error_body(resp)
    assert (resp.status, body["error"]) == (400, "invalid_json")
