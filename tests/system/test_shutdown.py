"""SIGTERM stops authsvc gracefully: real processes, a request in flight, real sockets.

A failed login whose answer waits out a 2 s backoff is the slow request: the failure is in
the database before the wait starts, so the test knows the handler is running when it sends
the signal, and the answer it must still get is the ordinary 401.

A terminal's Ctrl-C, `timeout` and systemd signal the whole process group, not the parent
alone: those tests start the server in a group of its own and signal the group.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from servers import Served, all_workers_listening, launched, serving

from authsvc.settings import Settings

BACKOFF_MS = 2000
SHUTDOWN_TIMEOUT = 10


def _settings(base: Settings, **changes: str) -> dict[str, str]:
    assert base.password_pepper is not None
    return {
        "AUTHSVC_DATABASE_URL": str(base.database_url),
        "AUTHSVC_PASSWORD_PEPPER": base.password_pepper,
        "AUTHSVC_SIGNING_KEYS_FILE": str(base.signing_keys_file),
        "AUTHSVC_BCRYPT_ROUNDS": "4",
        "AUTHSVC_MIGRATE_ON_START": "false",
        "AUTHSVC_LOGIN_BACKOFF_BASE_MS": str(BACKOFF_MS),
        "AUTHSVC_LOGIN_BACKOFF_MAX_MS": str(BACKOFF_MS),
        "AUTHSVC_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
        **changes,
    }


async def _slow_login(base: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        body = {"username": "nobody@example.com", "password": "a wrong password"}
        async with http.post(base + "/auth", json=body) as resp:
            return resp.status, await resp.json()


async def _until(db: asyncpg.Connection, query: str, what: str) -> None:
    for _ in range(200):
        if await db.fetchval(query):
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


async def _slow_login_under_way(base: str, db: asyncpg.Connection) -> asyncio.Task[tuple[int, Any]]:
    """A slow login, once its handler runs: its failure is recorded, its backoff begins."""
    in_flight = asyncio.create_task(_slow_login(base))
    await _until(db, "SELECT count(*) FROM auth_events WHERE outcome = 'failure'", "the failed login")
    return in_flight


async def _refused(base: str) -> bool:
    parts = urlsplit(base)
    try:
        _, writer = await asyncio.open_connection(parts.hostname, parts.port)
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # queued on a listening socket as it closed: try again
        return False
    writer.close()
    return False


async def _exit_code(proc: Any, within: float) -> int:
    deadline = time.monotonic() + within
    while proc.poll() is None:
        if time.monotonic() > deadline:
            pytest.fail(f"authsvc still running {within} s after the signal")
        await asyncio.sleep(0.05)
    return proc.returncode


def _stopped_cleanly(served: Served, code: int, workers: int) -> None:
    out = served.output
    assert code == 0, out
    for sign in ('"level": "ERROR"', "Traceback", "KeyboardInterrupt"):
        assert sign not in out, out
    assert out.count("database pool closed") == workers, out  # every worker ran its cleanup


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("ctrl_c_twice", [False, True], ids=["sigterm-to-the-parent", "ctrl-c-twice-to-the-group"])
async def test_a_stop_finishes_the_request_in_flight_and_refuses_new_ones(
    base_settings, db, tmp_path, workers, ctrl_c_twice
):
    settings = _settings(base_settings, AUTHSVC_WORKERS=str(workers))
    async with serving(tmp_path, **settings) as served:
        await all_workers_listening(served.base, workers)
        in_flight = await _slow_login_under_way(served.base, db)
        signalled = time.monotonic()
        if ctrl_c_twice:
            served.signal_group(signal.SIGINT)  # each worker gets it from the group and from its parent
        else:
            served.proc.send_signal(signal.SIGTERM)  # with 2 workers, to the parent, which passes it on

        # The listening socket goes at once, while the login is still waiting out its backoff.
        for _ in range(100):
            if await _refused(served.base):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("new connections were still accepted 1 s after the signal")
        assert not in_flight.done()
        if ctrl_c_twice:
            served.signal_group(signal.SIGINT)  # impatient: the stop under way goes on to its end

        status, body = await in_flight  # the whole ordinary answer, not a cut connection
        assert status == 401 and body["error"] == "invalid_credentials"
        assert time.monotonic() - signalled >= BACKOFF_MS / 1000 * 0.9
        code = await _exit_code(served.proc, SHUTDOWN_TIMEOUT)
    _stopped_cleanly(served, code, workers)  # every cleanup context ran, no traceback


async def test_a_request_past_the_deadline_is_cancelled_and_its_failure_still_counts(base_settings, db, tmp_path):
    # A 60 s backoff cannot be waited out within a 1 s deadline: the process must still stop
    # on time, and the failure it recorded must still close the pair (no free guess).
    settings = _settings(
        base_settings,
        AUTHSVC_LOGIN_BACKOFF_BASE_MS="60000",
        AUTHSVC_LOGIN_BACKOFF_MAX_MS="60000",
        AUTHSVC_SHUTDOWN_TIMEOUT="1",
        AUTHSVC_WORKERS="1",
    )
    async with serving(tmp_path, **settings) as served:
        in_flight = await _slow_login_under_way(served.base, db)
        signalled = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        # aiohttp waits the deadline for the handler, then as long again for it to stop once
        # cancelled: twice the setting at most, plus the cleanup.
        assert await _exit_code(served.proc, 5) == 0
        assert time.monotonic() - signalled < 2 * 1 + 1.5
        with pytest.raises(aiohttp.ServerDisconnectedError):  # closed, never a half-written answer
            await in_flight
    assert "database pool closed" in served.output and "Traceback" not in served.output
    closed = await db.fetchval(
        "SELECT next_attempt_at > now() + interval '30 seconds' FROM login_backoff WHERE identifier = $1",
        "nobody@example.com",
    )
    assert closed is True


# --- signals to the whole process group ---


@pytest.fixture(scope="module")
def embedded_cwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the embedded-database servers of this module run: one initdb, then the data
    dir (./.authsvc) is reused, as by someone who runs `authsvc serve` again and again."""
    return tmp_path_factory.mktemp("embedded")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    "signals",
    [[signal.SIGINT], [signal.SIGTERM], [signal.SIGINT, signal.SIGINT]],
    ids=["ctrl-c", "sigterm", "ctrl-c-twice"],
)
async def test_a_signal_to_the_group_stops_the_embedded_service_cleanly(embedded_cwd, workers, signals):
    # Each worker gets the signal twice (the group's, and the one its parent passes on), and
    # a second Ctrl-C lands while the embedded PostgreSQL is being stopped at exit.
    async with serving(embedded_cwd, AUTHSVC_WORKERS=str(workers), AUTHSVC_BCRYPT_ROUNDS="4") as served:
        await all_workers_listening(served.base, workers)
        for signum in signals:
            served.signal_group(signum)
            await asyncio.sleep(0.05)
        code = await _exit_code(served.proc, SHUTDOWN_TIMEOUT + 30)  # + the database's own stop
    _stopped_cleanly(served, code, workers)
    assert "embedded PostgreSQL" in served.output


async def _logged(served: Served, words: str) -> None:
    for _ in range(300):
        if words in served.output:
            return
        if served.proc.poll() is not None:
            pytest.fail(f"authsvc exited early:\n{served.output}")
        await asyncio.sleep(0.02)
    pytest.fail(f"{words!r} not logged in 6 s:\n{served.output}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_a_signal_to_the_group_while_the_workers_start(base_settings, tmp_path, signum):
    # The parent has just started the workers: they are still importing, with no handler
    # of their own yet. The signal waits for the handler; it is neither a traceback nor lost.
    with launched(tmp_path, **_settings(base_settings, AUTHSVC_WORKERS="2")) as served:
        await _logged(served, "with 2 workers")
        served.signal_group(signum)
        code = await _exit_code(served.proc, SHUTDOWN_TIMEOUT)
    _stopped_cleanly(served, code, 2)
