"""Log lines: JSON, one access line per request, the request id on every line and every response."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from ipaddress import ip_network
from typing import Any

import pytest
from helpers import PASSWORD, bearer, signup

from authsvc.observability.logs import JsonFormatter, LoopBatchedStream, TextFormatter

EMAIL = "logged@example.com"
WRONG = "not the password at all"
GENERATED = re.compile(r"[0-9a-f]{32}")


class Lines(logging.Handler):
    """Every record, formatted as production formats it, at the moment it is logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def parsed(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def access(self, request_id: str) -> dict[str, Any]:
        found = [p for p in self.parsed if p["logger"] == "authsvc.access" and p.get("request_id") == request_id]
        assert len(found) == 1, (request_id, self.lines)
        return found[0]


@pytest.fixture
def logged() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


async def test_logins_and_a_bad_token_are_logged_with_their_request_ids_and_no_secret(client, logged):
    await signup(client, EMAIL)
    wrong = await client.post("/auth", json={"username": EMAIL, "password": WRONG})
    assert wrong.status == 401
    right = await client.post("/auth", json={"username": EMAIL, "password": PASSWORD})
    assert right.status == 200
    tokens = await right.json()
    bad = await client.get("/users/me", headers=bearer(tokens["access_token"][:-4] + "AAAA"))
    assert bad.status == 401

    for resp in (wrong, right, bad):
        line = logged.access(resp.headers["X-Request-ID"])
        assert line["status"] == resp.status
    assert logged.access(right.headers["X-Request-ID"])["user_id"] is not None
    text = "\n".join(logged.lines)
    for secret in (PASSWORD, WRONG, tokens["access_token"], tokens["refresh_token"], tokens["access_token"][:-4]):
        assert secret not in text
    assert "$2b$" not in text and "Bearer" not in text


async def test_every_line_is_one_json_object_with_the_fixed_keys(client, logged):
    await client.get("/healthz?x=1")
    assert logged.lines
    for line in logged.lines:
        parsed = json.loads(line)
        assert "\n" not in line
        assert {"timestamp", "level", "logger", "message"} <= parsed.keys()
        assert parsed["timestamp"].endswith("+00:00")


async def test_one_access_line_per_request_with_template_path_and_timing(client, auth, logged):
    created = await client.post("/todos", json={"text": "log me"}, headers=auth)
    todo = await created.json()
    resp = await client.get(f"/todos/{todo['id']}?token=hidden-from-logs", headers=auth)
    assert resp.status == 200
    line = logged.access(resp.headers["X-Request-ID"])
    assert line["level"] == "INFO"
    assert line["method"] == "GET"
    assert line["route"] == "/todos/{id}"
    assert line["path"] == f"/todos/{todo['id']}"  # the query string is never logged
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["remote"] == "127.0.0.1"
    me = await (await client.get("/users/me", headers=auth)).json()
    assert line["user_id"] == me["id"]
    assert "hidden-from-logs" not in "\n".join(logged.lines)


async def test_unknown_routes_are_logged_as_unmatched(client, logged):
    resp = await client.get("/no/such/thing")
    assert resp.status == 404
    line = logged.access(resp.headers["X-Request-ID"])
    assert (line["route"], line["path"], line["status"], line["user_id"]) == ("unmatched", "/no/such/thing", 404, None)


async def test_a_token_in_the_path_is_not_logged(client, user_token, logged):
    refresh = "rt_" + "c2VjcmV0" * 5
    for path in (f"/auth/refresh/{refresh}", f"/todos/{user_token}", f"/x%0A{user_token}"):
        resp = await client.get(path)
        line = logged.access(resp.headers["X-Request-ID"])
        assert "[redacted]" in line["path"], line
    text = "\n".join(logged.lines)
    assert refresh not in text and user_token not in text and user_token[:20] not in text


async def test_a_long_path_is_cut_short_in_the_log(client, logged):
    resp = await client.get("/" + "a" * 5000)
    assert len(logged.access(resp.headers["X-Request-ID"])["path"]) < 300


async def test_the_remote_address_behind_a_trusted_proxy_is_the_client(make_client, logged):
    proxied = await make_client(trusted_proxies=(ip_network("127.0.0.0/8"),))
    resp = await proxied.get("/healthz", headers={"X-Forwarded-For": "198.51.100.9"})
    assert logged.access(resp.headers["X-Request-ID"])["remote"] == "198.51.100.9"


async def test_a_given_request_id_is_kept_and_echoed(client, logged):
    resp = await client.get("/healthz", headers={"X-Request-ID": "edge-7f3a:42"})
    assert resp.headers["X-Request-ID"] == "edge-7f3a:42"
    logged.access("edge-7f3a:42")


async def test_without_a_request_id_one_is_generated(client):
    first = await client.get("/healthz")
    second = await client.get("/healthz")
    ids = [first.headers["X-Request-ID"], second.headers["X-Request-ID"]]
    assert all(GENERATED.fullmatch(i) for i in ids) and ids[0] != ids[1]


@pytest.mark.parametrize(
    "given",
    [
        "x" * 129,
        "two words",
        "semi;colon",
        "quote\"d",
        "",
        "eyJhbGciOiJIUzI1NiJ9",
        "rt_c2VjcmV0c2VjcmV0c2VjcmV0",
        # a token anywhere in it, not only at the start
        "x-rt_c2VjcmV0c2VjcmV0c2VjcmV0",
        "req/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0",
    ],
)
async def test_an_unfit_request_id_is_replaced(client, logged, given):
    resp = await client.get("/healthz", headers={"X-Request-ID": given})
    rid = resp.headers["X-Request-ID"]
    assert GENERATED.fullmatch(rid)
    logged.access(rid)
    assert given not in "\n".join(line for line in logged.lines) or given == ""


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/nope", None, 404),
        ("DELETE", "/healthz", None, 405),
        ("GET", "/users/me", None, 401),
        ("POST", "/users", {"email": "not an email"}, 422),
        ("POST", "/auth", {"username": "nobody@example.com", "password": WRONG}, 401),
    ],
)
async def test_error_responses_carry_the_request_id_too(client, method, path, body, status):
    resp = await client.request(method, path, json=body, headers={"X-Request-ID": "err-1"})
    assert resp.status == status
    assert resp.headers["X-Request-ID"] == "err-1"


async def test_lines_logged_while_handling_a_request_carry_its_id(make_client, logged):
    strict = await make_client(refresh_reuse_grace=0)
    await signup(strict, EMAIL)
    login = await (await strict.post("/auth", json={"username": EMAIL, "password": PASSWORD})).json()
    await strict.post("/auth/refresh", json={"refresh_token": login["refresh_token"]})
    reuse = await strict.post(
        "/auth/refresh", json={"refresh_token": login["refresh_token"]}, headers={"X-Request-ID": "reuse-1"}
    )
    assert reuse.status == 400
    warnings = [p for p in logged.parsed if p["logger"] == "authsvc.auth.sessions" and p["level"] == "WARNING"]
    assert [w["request_id"] for w in warnings] == ["reuse-1"]
    # Outside any request there is no id.
    logging.getLogger("authsvc.test").warning("between requests")
    assert "request_id" not in logged.parsed[-1]


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("authsvc.x", logging.ERROR, __file__, 1, "failed %s", ("here",), None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_extra_fields_and_tracebacks():
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record(exc_info=sys.exc_info(), user_id=7)
    parsed = json.loads(JsonFormatter().format(record))
    assert parsed["message"] == "failed here" and parsed["level"] == "ERROR" and parsed["user_id"] == 7
    assert "ValueError: boom" in parsed["exception"]


def test_text_lines_cannot_be_forged_with_newlines():
    forged = ("/a\nERROR authsvc.db: forged",)
    record = logging.LogRecord("authsvc.x", logging.INFO, __file__, 1, "GET %s", forged, None)
    record.__dict__.update(path="/a\r\nERROR forged too")
    text = TextFormatter().format(record)
    assert len(text.splitlines()) == 1 and "\\x0a" in text and "\\x0d" in text


def test_text_lines_put_fields_before_the_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record(exc_info=sys.exc_info(), request_id="abc")
    first, *rest = TextFormatter().format(record).splitlines()
    assert first.endswith("ERROR authsvc.x: failed here [request_id=abc]")
    assert "ValueError: boom" in rest[-1]


@pytest.mark.parametrize(("successes", "logged_ok"), [(0.0, 0), (1.0, 20)])
async def test_success_lines_can_be_turned_off_but_refusals_are_always_logged(make_client, logged, successes, logged_ok):
    sampled = await make_client(access_log_successes=successes)
    oks = [await sampled.get("/healthz") for _ in range(20)]
    refused = [await sampled.get("/users/me") for _ in range(3)]
    assert {r.status for r in oks} == {200} and {r.status for r in refused} == {401}
    access = [p for p in logged.parsed if p["logger"] == "authsvc.access"]
    assert sum(p["status"] == 200 for p in access) == logged_ok
    assert sorted(p["request_id"] for p in access if p["status"] == 401) == sorted(r.headers["X-Request-ID"] for r in refused)
    metrics = await (await sampled.get("/metrics")).text()  # counted all the same
    assert 'authsvc_http_requests_total{method="GET",route="/healthz",status="200"} 20.0' in metrics


async def test_a_sampled_share_of_success_lines_is_about_that_share(make_client, logged):
    sampled = await make_client(access_log_successes=0.25)
    for _ in range(400):
        assert (await sampled.get("/healthz")).status == 200
    count = sum(p["logger"] == "authsvc.access" for p in logged.parsed)
    assert 40 <= count <= 180, count  # 100 expected; this far off is less likely than one in a billion


def test_lines_logged_on_a_loop_are_written_together_once_per_iteration_and_in_order():
    stream = io.StringIO()
    handler = LoopBatchedStream(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("authsvc.test.batched")
    log.addHandler(handler)
    log.propagate = False
    seen: list[str] = []
    try:
        log.warning("before the loop")  # no loop: at once
        assert stream.getvalue() == "before the loop\n"

        async def burst() -> None:
            for n in range(3):
                log.warning("line %d", n)
            seen.append(stream.getvalue())  # nothing yet: the iteration has not ended
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            seen.append(stream.getvalue())
            log.warning("left pending")

        asyncio.run(burst())
        # The loop ended with a line pending: the next line, off any loop, comes after it.
        log.warning("after the loop")
        assert seen == ["before the loop\n", "before the loop\nline 0\nline 1\nline 2\n"]
        assert stream.getvalue().splitlines()[-2:] == ["left pending", "after the loop"]
        # A new loop schedules its own write, though the ended one never ran the first.
        asyncio.run(_log_and_yield(log, "on a second loop"))
        assert stream.getvalue().endswith("on a second loop\n")
    finally:
        log.removeHandler(handler)
        log.propagate = True


async def _log_and_yield(log: logging.Logger, message: str) -> None:
    log.warning(message)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
