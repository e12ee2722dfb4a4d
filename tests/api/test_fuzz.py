"""Every operation of /openapi.json, fuzzed by schemathesis against a real server and database.

The app runs on a loopback port in a thread of its own (schemathesis speaks plain HTTP
through requests). Protected operations get a signed-up user's bearer token, introspection
a service credential, so they are exercised past 401. Each response must be no 5xx and
conform to the document: status, headers, content type and body.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import requests
import schemathesis
from aiohttp import web
from helpers import PASSWORD
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi import checks

from authsvc.app import create_app
from authsvc.appkeys import POOL, SETTINGS
from authsvc.http.openapi import (
    ADMIN_USER_PATH,
    API_KEY_PATH,
    CLIENT_PATH,
    OPERATIONS,
    TODO_PATH,
)
from authsvc.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ("fuzz-service", "fuzz-service-secret-0123456789")
EMAIL = "fuzz@example.com"
TARGET = "fuzz-target@example.com"  # the user the admin routes may disable, demote or delete
# Per operation and mode: about 90 s for the whole document on two cores. Raise it for a
# deeper run by hand: AUTHSVC_FUZZ_EXAMPLES=500 pytest tests/test_fuzz.py
EXAMPLES = int(os.environ.get("AUTHSVC_FUZZ_EXAMPLES", "20"))


class LiveServer:
    """create_app(settings) served on 127.0.0.1 from a background event loop."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-server", daemon=True)
        self.runner = web.AppRunner(self.app)
        self.url = ""

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self) -> str:
        self.thread.start()
        self.call(self.runner.setup())
        self.call(web.TCPSite(self.runner, "127.0.0.1", 0).start())
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def live_url(settings: Settings) -> Iterator[str]:
    server = LiveServer(settings.replace(introspection_clients=(CLIENT,)))
    try:
        yield server.start()
    finally:
        server.stop()


async def _make_admin(database_url: str, email: str) -> None:
    """What `authsvc users roles EMAIL admin user` does, straight in SQL."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE users SET roles = '{admin,user}' WHERE email = $1", email)
    finally:
        await conn.close()


class Account:
    """An admin with a live session and a few todos; made again when a fuzzed call ends it.

    The admin routes act on `TARGET`, a second user, and on whatever ids the fuzzer draws; the
    admin's own account they refuse to disable, delete or demote (409 own_account)."""

    def __init__(self, base_url: str, database_url: str) -> None:
        self.base_url = base_url
        self.database_url = database_url
        self.http = requests.Session()
        self.token = ""
        self.renew()

    def renew(self) -> None:
        for email in (EMAIL, TARGET):
            resp = self.http.post(f"{self.base_url}/users", json={"email": email, "password": PASSWORD})
            assert resp.status_code in (201, 409), resp.text
        asyncio.run(_make_admin(self.database_url, EMAIL))
        resp = self.http.post(f"{self.base_url}/auth", json={"username": EMAIL, "password": PASSWORD})
        assert resp.status_code == 200, resp.text
        self.token = resp.json()["access_token"]
        self.user_id = self.http.get(f"{self.base_url}/users/me", headers=self.bearer()).json()["id"]
        for text in ("one", "two"):  # ids for the todo operations to find
            self.http.post(f"{self.base_url}/todos", json={"text": text}, headers=self.bearer())

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def headers_for(self, case: Any) -> dict[str, str]:
        security = case.operation.definition.raw.get("security") or []
        names = {name for requirement in security for name in requirement}
        if "bearerAuth" in names:
            return self.bearer()
        if "introspectionClient" in names:
            basic = base64.b64encode(":".join(CLIENT).encode()).decode()
            return {"Authorization": f"Basic {basic}"}
        return {}

    def after(self, case: Any, status: int) -> None:
        ends_session = {("DELETE", "/users/me"), ("POST", "/auth/logout"), ("POST", "/users/me/password")}
        if status < 300 and (case.method.upper(), case.path) in ends_session:
            self.renew()


@pytest.fixture
def account(live_url: str, settings: Settings) -> Iterator[Account]:
    acc = Account(live_url, str(settings.migrate_url))
    yield acc
    acc.http.close()


@pytest.fixture
def api_schema(live_url: str) -> Any:
    """The document as served, with requests going to the live server."""
    config = SchemathesisConfig.from_path(ROOT / "schemathesis.toml")
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json", config=config)
    schema.config.update(base_url=live_url)
    return schema


ROUTES = sorted(OPERATIONS, key=lambda mp: (mp[1], mp[0]))


def _exclusive_given(case: Any) -> set[str]:
    """The parameters this case gives of those its query schema lets at most one of be given
    (GET /todos: after or offset). OpenAPI states no rule between two parameters, so a
    positive case may give both: valid one by one, refused together."""
    op = OPERATIONS.get((case.method.upper(), case.path))
    return set(case.query or {}) & set(getattr(op and op.query, "exclusive", ()))


def call_and_validate(case: Any, account: Account) -> Any:
    """case.call_and_validate with the account's credentials; a positive case that gives two
    exclusive parameters must be refused, with both named, and conform to the document."""
    both = _exclusive_given(case)
    if len(both) < 2 or case.meta is None or not case.meta.generation.mode.is_positive:
        return case.call_and_validate(headers=account.headers_for(case), timeout=10)
    response = case.call_and_validate(
        headers=account.headers_for(case), timeout=10, excluded_checks=[checks.positive_data_acceptance]
    )
    assert response.status_code == 422, response.text
    assert set(response.json()["details"]) == both, response.text
    return response


def _cases() -> list[Any]:
    """(method, path, mode) for every operation; negative data only where there is input to spoil."""
    params = []
    for method, path in ROUTES:
        op = OPERATIONS[method, path]
        modes = [GenerationMode.POSITIVE]
        if op.json or op.form or op.query or "{" in path:
            modes.append(GenerationMode.NEGATIVE)
        params += [pytest.param(method, path, mode, id=f"{method} {path} {mode.value}") for mode in modes]
    return params


# Schemathesis' own pytest decorator does not run on pytest 9.2 (it sets Function._nodeid),
# so each operation is its own test here and Hypothesis draws from schemathesis' strategies.
@pytest.mark.slow
@pytest.mark.parametrize("method, path, mode", _cases())
def test_operation(method: str, path: str, mode: GenerationMode, api_schema: Any, account: Account) -> None:
    operation = api_schema[path][method]

    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = call_and_validate(case, account)
        statuses.append(response.status_code)
        account.after(case, response.status_code)

    check()
    if mode == GenerationMode.POSITIVE and OPERATIONS[method, path].auth is not None:
        # The credentials worked: the operation itself was exercised, not only the auth check.
        assert set(statuses) - {401}, statuses


@pytest.mark.slow
@pytest.mark.parametrize("method, path", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_operation_boundaries(method: str, path: str, api_schema: Any, account: Account) -> None:
    """Schemathesis' coverage phase: boundary values (lengths, ranges, missing and extra fields,
    other methods) drawn deterministically from the document, valid and invalid."""
    operation = api_schema[path][method]
    cases = api_schema.iter_coverage_cases(
        operation,
        generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        generation_config=api_schema.config.generation_for(operation=operation),
    )
    count = 0
    for count, case in enumerate(cases, 1):
        response = call_and_validate(case, account)
        account.after(case, response.status_code)
    assert count > 0


# --- the refusals a fuzzer rarely draws, each checked against the document ---

CONFORMANCE = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture
def strict_server(settings: Settings) -> Iterator[LiveServer]:
    """A server with small limits, so that 408, 413 and 429 come quickly."""
    server = LiveServer(
        settings.replace(
            introspection_clients=(CLIENT,), account_max_failures_per_hour=2, idle_timeout=1, max_body_bytes=1024
        )
    )
    server.url = server.start()
    try:
        yield server
    finally:
        server.stop()


def test_refusals_match_the_document(strict_server: LiveServer, settings: Settings) -> None:
    """Each error status of the document, brought about on purpose and checked against it."""
    url = strict_server.url
    config = SchemathesisConfig.from_path(ROOT / "schemathesis.toml")
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    account = Account(url, str(strict_server.app[SETTINGS].migrate_url))
    http = account.http
    seen: dict[tuple[str, str], set[int]] = {}

    def conforms(method: str, path: str, response: requests.Response | schemathesis.Response, status: int) -> None:
        assert response.status_code == status, (method, path, response.status_code, response.text)
        schema[path][method].Case().validate_response(response, checks=CONFORMANCE)
        seen.setdefault((method, path), set()).add(status)

    todo = http.post(f"{url}/todos", json={"text": "x"}, headers=account.bearer()).json()
    big = {"text": "x" * 2000}
    conforms("POST", "/todos", http.post(f"{url}/todos", json=big, headers=account.bearer()), 413)
    conforms("POST", "/todos", http.post(f"{url}/todos", data="text", headers=account.bearer()), 415)
    bad_json = {**account.bearer(), "Content-Type": "application/json"}
    conforms("POST", "/todos", http.post(f"{url}/todos", data="{", headers=bad_json), 400)
    conforms("POST", "/todos", http.post(f"{url}/todos", json={}, headers=account.bearer()), 422)
    conforms("GET", "/todos", http.get(f"{url}/todos?limit=0", headers=account.bearer()), 422)
    conforms("GET", "/users/me", http.get(f"{url}/users/me"), 401)
    conforms("GET", "/users/me", http.get(f"{url}/users/me?access_token=x", headers=account.bearer()), 400)
    conforms("GET", "/todos/{id}", http.get(f"{url}/todos/{todo['id'] + 100}", headers=account.bearer()), 404)
    conforms("DELETE", "/todos/{id}", http.delete(f"{url}/todos/abc", headers=account.bearer()), 404)
    conforms("POST", "/users", http.post(f"{url}/users", json={"email": EMAIL, "password": PASSWORD}), 409)
    me = f"{url}/admin/users/{account.user_id}"
    conforms("POST", f"{ADMIN_USER_PATH}/disable", http.post(f"{me}/disable", headers=account.bearer()), 409)
    unknown_role = http.put(f"{me}/roles", json={"roles": ["wizard"]}, headers=account.bearer())
    conforms("PUT", f"{ADMIN_USER_PATH}/roles", unknown_role, 422)
    assert unknown_role.json()["error"] == "unknown_role"
    # Well-formed passwords the password policy refuses: 422 with its own codes.
    weak = http.post(f"{url}/users", json={"email": "weak@example.com", "password": "Password1"})
    conforms("POST", "/users", weak, 422)
    weak_change = {"current_password": PASSWORD, "new_password": "qwertyuiop"}
    answer = http.post(f"{url}/users/me/password", json=weak_change, headers=account.bearer())
    conforms("POST", "/users/me/password", answer, 422)
    assert (weak.json()["error"], answer.json()["error"]) == ("password_too_common", "password_too_common")
    wrong = {"current_password": "not the password", "new_password": PASSWORD + "!"}
    answer = http.post(f"{url}/users/me/password", json=wrong, headers=account.bearer())
    conforms("POST", "/users/me/password", answer, 403)
    conforms("POST", "/auth/refresh", http.post(f"{url}/auth/refresh", json={"refresh_token": "nope"}), 400)
    conforms("POST", "/auth/token", http.post(f"{url}/auth/token", data={"grant_type": "implicit"}), 400)
    conforms("POST", "/auth/token", http.post(f"{url}/auth/token", json={"grant_type": "password"}), 400)
    conforms("POST", "/auth/revoke", http.post(f"{url}/auth/revoke", data={}), 400)
    conforms("POST", "/auth/introspect", http.post(f"{url}/auth/introspect", data={"token": "x"}), 401)
    # Wrong passwords from an address the account has not used soon spend its budget: then 429
    # with Retry-After, on both login routes.
    guess = {"email": "stranger@example.com", "password": "wrong password"}
    conforms("POST", "/auth", http.post(f"{url}/auth", json=guess), 401)
    for _ in range(5):
        answer = http.post(f"{url}/auth", json=guess)
        if answer.status_code != 401:
            break
    conforms("POST", "/auth", answer, 429)
    form = {"grant_type": "password", "username": guess["email"], "password": guess["password"]}
    conforms("POST", "/auth/token", http.post(f"{url}/auth/token", data=form), 429)
    # A body that stops arriving: 408 after AUTHSVC_IDLE_TIMEOUT, and the connection closes.
    conforms("POST", "/todos", _half_sent_body(url, "/todos", account.bearer()), 408)
    # The database gone (here: the pool closed under the app): 503 with Retry-After.
    strict_server.call(strict_server.app[POOL].close())
    conforms("GET", "/readyz", http.get(f"{url}/readyz"), 503)
    conforms("GET", "/todos", http.get(f"{url}/todos", headers=account.bearer()), 503)
    conforms("POST", "/auth", http.post(f"{url}/auth", json={"email": EMAIL, "password": PASSWORD}), 503)
    every_error = {400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 503}
    assert {status for statuses in seen.values() for status in statuses} == every_error


def test_successes_match_the_document(live_url: str, settings: Settings) -> None:
    """Every operation's success answer, brought about on purpose and checked against the
    document: random data rarely logs in, refreshes or finds an existing todo."""
    config = SchemathesisConfig.from_path(ROOT / "schemathesis.toml")
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json", config=config)
    account = Account(live_url, str(settings.migrate_url))
    http = account.http
    seen: set[tuple[str, str]] = set()

    def conforms(method: str, path: str, response: requests.Response) -> requests.Response:
        expected = OPERATIONS[method, path].ok
        assert response.status_code == expected, (method, path, response.status_code, response.text)
        schema[path][method].Case().validate_response(response, checks=CONFORMANCE)
        seen.add((method, path))
        return response

    url, auth = live_url, account.bearer()
    basic = {"Authorization": "Basic " + base64.b64encode(":".join(CLIENT).encode()).decode()}
    public = ("/healthz", "/readyz", "/openapi.json", "/.well-known/jwks.json", "/.well-known/oauth-authorization-server")
    for path in public:
        conforms("GET", path, http.get(url + path))
    conforms("GET", "/metrics", http.get(url + "/metrics"))
    conforms("GET", "/metrics", http.get(url + "/metrics", headers={"Accept": "application/openmetrics-text"}))
    conforms("POST", "/users", http.post(f"{url}/users", json={"email": "second@example.com", "password": PASSWORD}))
    login = conforms("POST", "/auth", http.post(f"{url}/auth", json={"email": EMAIL, "password": PASSWORD})).json()
    refresh = {"refresh_token": login["refresh_token"]}
    pair = conforms("POST", "/auth/refresh", http.post(f"{url}/auth/refresh", json=refresh)).json()
    form = {"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]}
    conforms("POST", "/auth/token", http.post(f"{url}/auth/token", data=form))
    form = {"grant_type": "password", "username": EMAIL, "password": PASSWORD}
    granted = conforms("POST", "/auth/token", http.post(f"{url}/auth/token", data=form)).json()
    token = {"token": granted["access_token"]}
    answer = conforms("POST", "/auth/introspect", http.post(f"{url}/auth/introspect", data=token, headers=basic))
    assert answer.json()["active"] is True
    conforms("POST", "/auth/revoke", http.post(f"{url}/auth/revoke", data={"token": granted["refresh_token"]}))
    conforms("GET", "/users/me", http.get(f"{url}/users/me", headers=auth))
    conforms("PATCH", "/users/me", http.patch(f"{url}/users/me", json={"first_name": "Fuzz"}, headers=auth))
    todo = conforms("POST", "/todos", http.post(f"{url}/todos", json={"text": "checked"}, headers=auth)).json()
    conforms("GET", "/todos", http.get(f"{url}/todos?completed=false", headers=auth))
    # A full page: its Link header to the next one, followed, as documented.
    first = conforms("GET", "/todos", http.get(f"{url}/todos?limit=1", headers=auth))
    assert first.links["next"]["url"].startswith("/todos?after="), first.headers
    conforms("GET", "/todos", http.get(url + first.links["next"]["url"], headers=auth))
    one = f"{url}/todos/{todo['id']}"
    conforms("GET", TODO_PATH, http.get(one, headers=auth))
    conforms("PUT", TODO_PATH, http.put(one, json={"text": "again", "completed": True}, headers=auth))
    conforms("PATCH", TODO_PATH, http.patch(one, json={"completed": False}, headers=auth))
    conforms("DELETE", TODO_PATH, http.delete(one, headers=auth))
    keys = f"{url}/users/me/api-keys"
    made = conforms("POST", "/users/me/api-keys", http.post(keys, json={"name": "fuzz", "scopes": ["todos"]}, headers=auth))
    key = made.json()
    answer = conforms("POST", "/auth/introspect", http.post(f"{url}/auth/introspect", data={"token": key["key"]}, headers=basic))
    assert answer.json()["token_type"] == "api_key"
    assert conforms("GET", "/users/me/api-keys", http.get(keys, headers=auth)).json()[0]["id"] == key["id"]
    conforms("DELETE", API_KEY_PATH, http.delete(f"{keys}/{key['id']}", headers=auth))
    admin = auth  # the fuzz account is an admin (Account)
    me = http.get(f"{url}/users/me", headers=auth).json()
    key = http.post(keys, json={"name": "fuzz", "scopes": ["todos"], "expires_in": 3600}, headers=auth).json()
    conforms("GET", "/admin/users/{id}/api-keys", http.get(f"{url}/admin/users/{me['id']}/api-keys", headers=admin))
    gone = http.delete(f"{url}/admin/users/{me['id']}/api-keys/{key['id']}", headers=admin)
    conforms("DELETE", "/admin/users/{id}/api-keys/{key_id}", gone)
    # A client, through the admin API and the grants it may use.
    new = {"name": "fuzz-orders", "scopes": ["todos", "introspect"]}
    made = conforms("POST", "/admin/clients", http.post(f"{url}/admin/clients", json=new, headers=auth)).json()
    conforms("GET", "/admin/clients", http.get(f"{url}/admin/clients", headers=auth))
    path = f"{url}/admin/clients/{made['id']}"
    rotated = conforms("POST", CLIENT_PATH + "/secrets", http.post(path + "/secrets", headers=auth)).json()
    conforms("POST", CLIENT_PATH + "/secrets/retire", http.post(path + "/secrets/retire", headers=auth))
    conforms("POST", CLIENT_PATH + "/disable", http.post(path + "/disable", headers=auth))
    conforms("POST", CLIENT_PATH + "/enable", http.post(path + "/enable", headers=auth))
    pair = f"{made['id']}:{rotated['client_secret']}"
    client_basic = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    form = {"grant_type": "client_credentials", "scope": "todos"}
    conforms("POST", "/auth/token", http.post(f"{url}/auth/token", data=form, headers=client_basic))
    own = {"client_id": made["id"], "client_secret": rotated["client_secret"]}
    conforms("POST", "/auth", http.post(f"{url}/auth", json=own))
    conforms("DELETE", CLIENT_PATH, http.delete(path, headers=auth))
    # The admin routes, on the second user.
    second = http.get(f"{url}/admin/users?email_prefix=second@", headers=auth).json()[0]
    pages = conforms("GET", "/admin/users", http.get(f"{url}/admin/users?limit=1", headers=auth))
    assert pages.links["next"]["url"].startswith("/admin/users?after="), pages.headers
    conforms("GET", "/admin/users", http.get(url + pages.links["next"]["url"], headers=auth))
    other = f"{url}/admin/users/{second['id']}"
    conforms("GET", ADMIN_USER_PATH, http.get(other, headers=auth))
    conforms("POST", f"{ADMIN_USER_PATH}/disable", http.post(f"{other}/disable", headers=auth))
    conforms("POST", f"{ADMIN_USER_PATH}/enable", http.post(f"{other}/enable", headers=auth))
    promote = http.put(f"{other}/roles", json={"roles": ["admin"]}, headers=auth)
    promoted = conforms("PUT", f"{ADMIN_USER_PATH}/roles", promote)
    assert promoted.json()["roles"] == ["admin"]
    conforms("DELETE", ADMIN_USER_PATH, http.delete(other, headers=auth))
    change = {"current_password": PASSWORD, "new_password": PASSWORD + " and more"}
    conforms("POST", "/users/me/password", http.post(f"{url}/users/me/password", json=change, headers=auth))
    conforms("POST", "/auth/logout", http.post(f"{url}/auth/logout?scope=all", headers=auth))
    mine = http.post(f"{url}/auth", json={"email": EMAIL, "password": change["new_password"]}).json()
    last = {"Authorization": f"Bearer {mine['access_token']}"}
    conforms("DELETE", "/users/me", http.delete(f"{url}/users/me", headers=last))
    assert seen == set(OPERATIONS), sorted(set(OPERATIONS) - seen)


def _half_sent_body(url: str, path: str, headers: dict[str, str]) -> schemathesis.Response:
    """Send the headers and part of the promised body over a raw socket; parse the answer."""
    host, port = url.removeprefix("http://").split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 100\r\n{head}\r\n{{\"text\":"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request.encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head_bytes, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    _, status, reason = status_line.split(" ", 2)
    answer_headers: dict[str, list[str]] = {}
    for line in header_lines:
        name, _, value = line.partition(": ")
        answer_headers.setdefault(name.lower(), []).append(value)
    return schemathesis.Response(
        status_code=int(status),
        headers=answer_headers,
        content=body,
        request=requests.Request("POST", f"{url}{path}", headers=headers).prepare(),
        elapsed=0.0,
        message=reason,
        encoding="utf-8",
        http_version="1.1",
        verify=True,
    )
