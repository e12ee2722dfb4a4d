"""Header limits, bytes no well-behaved client sends, and what a client that goes away
mid-request can (not) gain.

The body limit (413) and the idle timeout (408 / closed) are tested in test_bad_input.py and
test_brute_force.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import PASSWORD
from servers import quick_settings, serving

from authsvc.app import MAX_FIELD_SIZE, MAX_HEADERS, MAX_LINE_SIZE


async def _exchange(client, head: str, body: bytes = b"") -> bytes:
    """Send one raw request; return all the server sent before closing (or 2 s of it)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
    try:
        async with asyncio.timeout(2):
            return await reader.read(-1)  # until the server closes the connection
    finally:
        writer.close()


def _request(path: str = "/healthz", headers: dict[str, str] | None = None) -> str:
    lines = [f"GET {path} HTTP/1.1", "Host: authsvc"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return "\r\n".join(lines) + "\r\n\r\n"


@pytest.mark.parametrize(
    "head",
    [
        _request(headers={"X-Big": "a" * (MAX_FIELD_SIZE + 1)}),
        _request(path="/healthz?" + "a" * MAX_LINE_SIZE),
        _request(headers={f"X-H{i}": "1" for i in range(MAX_HEADERS + 1)}),
    ],
    ids=["one header too long", "request line too long", "too many headers"],
)
async def test_oversized_headers_are_400_and_the_connection_closed(client, head):
    answer = await _exchange(client, head)
    # aiohttp's parser answers these itself, in plain text, before any authsvc code runs.
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    assert b"Connection: close" in answer or answer.startswith(b"HTTP/1.0 ")
    # And the read above ended: the server closed the connection after answering.


async def test_what_real_clients_send_fits(client, auth):
    # A bearer token among a browser's worth of headers, and a header just under the limit.
    headers = {**auth, **{f"X-Browser-{i}": "x" * 100 for i in range(40)}}
    async with client.get("/todos", headers=headers) as resp:
        assert resp.status == 200
    async with client.get("/healthz", headers={"X-Long": "v" * (MAX_FIELD_SIZE - 100)}) as resp:
        assert resp.status == 200


async def test_a_login_abandoned_by_its_client_still_counts(make_client, db):
    """Handlers are not cancelled when the client disconnects: the guess is checked, its
    failure recorded and the pair closed, so hanging up before the answer (to dodge the
    backoff or to learn nothing but cost us a bcrypt check) gains an attacker nothing."""
    # A real bcrypt cost, so the hang-up surely comes while the password is being checked.
    client = await make_client(
        bcrypt_rounds=12, login_backoff_base_ms=60_000, login_backoff_max_ms=60_000, max_sleeping=0
    )
    body = json.dumps({"username": "hangup@example.com", "password": "a wrong password"}).encode()
    head = (
        "POST /auth HTTP/1.1\r\nHost: authsvc\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head.encode() + body)
    await writer.drain()
    # Hang up as soon as the attempt is claimed, before the verdict.
    for _ in range(200):
        if await db.fetchval("SELECT count(*) FROM login_backoff WHERE identifier = 'hangup@example.com'"):
            break
        await asyncio.sleep(0.01)
    writer.close()
    await writer.wait_closed()

    for _ in range(200):
        outcome = await db.fetchval("SELECT outcome FROM auth_events WHERE identifier = 'hangup@example.com'")
        if outcome is not None:
            break
        await asyncio.sleep(0.01)
    assert outcome == "failure"  # not "error": the check ran on and the attempt was not given back
    async with client.post("/auth", json={"username": "hangup@example.com", "password": PASSWORD}) as resp:
        assert resp.status == 429  # even the right password waits out the backoff


async def test_a_refused_header_is_not_logged(client, user_token, caplog):
    # aiohttp quotes the first 100 bytes of an over-long line in its exception: here a token.
    padded = user_token + "." + "a" * MAX_FIELD_SIZE
    caplog.set_level("DEBUG")
    answer = await _exchange(client, _request(headers={"Authorization": f"Bearer {padded}"}))
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    logged = "\n".join(caplog.text.splitlines() + [r.getMessage() for r in caplog.records])
    assert user_token[:40] not in logged
    assert "Traceback" not in logged  # a malformed request is the client's error, not ours
    assert any("malformed request" in r.getMessage() for r in caplog.records)


def _status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_a_non_ascii_authorization_header_is_401_not_500(make_client):
    client = await make_client(introspection_clients=(("svc", "a-long-enough-service-secret"),))
    cases = [
        ("GET /users/me", "Bearer eyJabc\xff", "invalid_token"),
        ("POST /auth/introspect", "Basic \xff\xfe", "invalid_client"),
        ("POST /auth/introspect", "Basic c3ZjOmHpbG9uZw==", "invalid_client"),  # base64 of Latin-1 bytes
    ]
    for line, authorization, code in cases:
        method, path = line.split()
        head = f"{method} {path} HTTP/1.1\r\nHost: authsvc\r\nAuthorization: {authorization}\r\n"
        answer = await _exchange(client, head + "Content-Length: 0\r\nConnection: close\r\n\r\n")
        status, body = _status_and_body(answer)
        assert status == 401, answer[:300]
        assert json.loads(body)["error"] == code


BROKEN_CHUNKS = [
    # A chunk size that is not hexadecimal, carrying a password.
    b"ZZ" + PASSWORD.encode() + b"\r\n\r\n",
    # A chunk longer than its size says.
    b"4\r\n" + PASSWORD.encode() + b"\r\n0\r\n\r\n",
]


async def _send_chunked(host: str, port: int, path: str, content_type: str, chunks: bytes) -> bytes:
    """The head first, the broken chunks once the handler waits for them (the parser fails
    inside the handler's read then, not before the handler runs); all the server answers."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: authsvc\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head.encode())
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(chunks)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(-1)
    finally:
        writer.close()


ROUTES = [
    ("/auth", "application/json"),
    ("/users", "application/json"),
    ("/auth/token", "application/x-www-form-urlencoded"),
]


@pytest.mark.parametrize("chunks", BROKEN_CHUNKS, ids=["bad size", "overlong chunk"])
async def test_a_broken_chunked_body_is_refused_and_not_logged(make_client, caplog, chunks):
    # aiohttp's C parser, failing on a chunk the handler is waiting for, never wakes the
    # handler: the body timeout ends the wait (408) and the connection.
    client = await make_client(idle_timeout=1)
    caplog.set_level("DEBUG")
    for path, content_type in ROUTES:
        answer = await _send_chunked(client.server.host, client.server.port, path, content_type, chunks)
        assert _status_and_body(answer)[0] in (400, 408), (path, answer[:300])
    logged = "\n".join([caplog.text] + [r.getMessage() for r in caplog.records])
    assert PASSWORD not in logged
    assert "Traceback" not in logged and not any(r.levelname == "ERROR" for r in caplog.records)


@pytest.mark.slow
async def test_the_pure_python_parser_answers_broken_bodies_400_too(tmp_path, database_url):
    """Where aiohttp runs without its C extension (no wheel for the platform), its errors come
    from elsewhere; they must still be 400s with nothing of the body in the log."""
    settings = quick_settings(database_url, AUTHSVC_LOG_LEVEL="DEBUG")
    async with serving(tmp_path, AIOHTTP_NO_EXTENSIONS="1", **settings) as served:
        port = int(served.base.rsplit(":", 1)[1])
        for chunks in BROKEN_CHUNKS:
            for path, content_type in ROUTES:
                answer = await _send_chunked("127.0.0.1", port, path, content_type, chunks)
                assert _status_and_body(answer)[0] == 400, (path, answer[:300])
    output = served.output
    assert PASSWORD not in output and "Traceback" not in output, output[-3000:]
    assert '"status": 500' not in output


async def test_hanging_up_mid_body_is_counted_as_499_not_as_a_database_fault(client, caplog):
    caplog.set_level("INFO")
    head = "POST /users HTTP/1.1\r\nHost: authsvc\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head.encode() + b'{"email"')
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        lines = [r for r in caplog.records if r.name == "authsvc.access" and getattr(r, "route", None) == "/users"]
        if lines:
            break
        await asyncio.sleep(0.02)
    assert [r.status for r in lines] == [499]
    assert not [r for r in caplog.records if r.name == "authsvc.db.pool"], caplog.text  # no outage was seen
    async with client.get("/metrics") as resp:
        text = await resp.text()
    assert 'authsvc_http_requests_total{method="POST",route="/users",status="499"} 1.0' in text
    assert 'status="503"' not in text
