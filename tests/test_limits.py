"""Header limits and what a client that goes away mid-request can (not) gain.

The body limit (413) and the idle timeout (408 / closed) are tested in test_bad_input.py and
test_brute_force.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from authsvc.app import MAX_FIELD_SIZE, MAX_HEADERS, MAX_LINE_SIZE
from helpers import PASSWORD


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
