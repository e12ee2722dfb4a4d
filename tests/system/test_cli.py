"""The `authsvc` command as an operator runs it: real processes, real HTTP on loopback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from helpers import PASSWORD
from servers import (
    COMMAND,
    all_workers_listening,
    free_port,
    listeners,
    quick_settings,
    run_command,
    server_env,
    serving,
    temporary_cluster,
)

from authsvc.cli import main as cli
from authsvc.db import migrate


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "authsvc"
    assert script.exists(), "pip install should put `authsvc` beside python"


@pytest.mark.parametrize(
    ("var", "value"),
    [("AUTHSVC_PORT", "http"), ("AUTHSVC_BCRYPT_ROUNDS", "100"), ("AUTHSVC_CORS_ORIGINS", "*")],
)
def test_bad_setting_stops_start_with_one_line(var, value):
    result = run_command("serve", **{var: value})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"authsvc: {var}: ")
    assert "Traceback" not in result.stderr


def test_external_database_without_secrets_is_refused(database_url, tmp_path):
    # A port of its own: the port is taken before the secrets are looked at, and 8080 may be busy.
    port = str(free_port())
    result = run_command("serve", "--port", port, AUTHSVC_DATABASE_URL=database_url, AUTHSVC_DATA_DIR=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("authsvc: AUTHSVC_SIGNING_KEYS_FILE: no signing keys")
    assert "Traceback" not in result.stderr
    hs256 = run_command(
        "serve", "--port", port, AUTHSVC_DATABASE_URL=database_url, AUTHSVC_DATA_DIR=str(tmp_path), AUTHSVC_TOKEN_ALGORITHM="HS256"
    )
    assert hs256.returncode == 2
    assert hs256.stderr.startswith("authsvc: AUTHSVC_TOKEN_SECRET: not set")


def test_unreachable_database_is_one_line(tmp_path):
    result = run_command(
        "migrate",
        AUTHSVC_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        AUTHSVC_DATA_DIR=str(tmp_path),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_migrate_command(databases):
    url = databases.create(migrated=False)
    first = run_command("migrate", AUTHSVC_DATABASE_URL=url)
    assert first.returncode == 0, first.stderr
    assert "0001_init" in first.stdout
    again = run_command("migrate", AUTHSVC_DATABASE_URL=url)
    assert again.returncode == 0 and "0 migration(s) applied" in again.stdout


@pytest.mark.slow
async def test_migrate_waits_for_a_database_that_comes_up_late():
    # As in compose on a fresh volume: the job starts before the server takes connections.
    with temporary_cluster("authsvc-late-") as cluster:
        url = await cluster.create_database(migrated=False)
        await asyncio.to_thread(cluster.stop, "fast")
        proc = subprocess.Popen(
            [*COMMAND, "migrate", "--wait", "60"],
            env=server_env(AUTHSVC_DATABASE_URL=url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Started only once the job has said it is waiting: no fixed sleep to guess at.
            said = await asyncio.to_thread(_read_until, proc, "database not up yet")
            assert proc.poll() is None, proc.communicate()  # still trying
            await asyncio.to_thread(cluster.start)
            out, rest = await asyncio.to_thread(proc.communicate, timeout=60)
            err = said + rest
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert f"{len(migrate.discover())} migration(s) applied" in out
    assert err.count("database not up yet") == 1, err  # said once, not at every try
    assert "Traceback" not in err


def _read_until(proc: subprocess.Popen[str], words: str) -> str:
    """The process's stderr up to and including the first line holding `words`."""
    assert proc.stderr is not None
    seen = ""
    while words not in seen:
        line = proc.stderr.readline()
        assert line, f"stderr ended before {words!r}: {seen}"
        seen += line
    return seen


def _misconfigured(url: str, problem: str) -> str:
    parts = urlsplit(url)
    if problem == "unknown role":
        return urlunsplit(parts._replace(netloc="no_such_role@" + parts.netloc.rpartition("@")[2]))
    return urlunsplit(parts._replace(path=parts.path + "_gone"))


@pytest.mark.parametrize(
    ("problem", "words"),
    [
        ("unknown role", "no_such_role"),
        ("unknown database", "does not exist"),
        ("database ahead", "newer than this code knows"),
    ],
)
async def test_migrate_wait_still_fails_at_once_on_a_misconfiguration(databases, problem, words):
    url = databases.create()
    if problem == "database ahead":
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'from_the_future')")
        finally:
            await conn.close()
    else:
        url = _misconfigured(url, problem)
    started = time.monotonic()
    result = await asyncio.to_thread(run_command, "migrate", "--wait", "60", AUTHSVC_DATABASE_URL=url)
    assert time.monotonic() - started < 15, "a misconfiguration must not be waited out"
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr


def test_what_migrate_waits_for_and_what_not():
    for error in (ConnectionRefusedError, FileNotFoundError, socket.gaierror, TimeoutError, asyncpg.CannotConnectNowError):
        assert issubclass(error, cli.NOT_UP_YET), error
    for error in (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError):
        assert not issubclass(error, cli.NOT_UP_YET), error
    bad = run_command("migrate", "--wait", "-1", AUTHSVC_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert bad.returncode == 2 and bad.stderr.strip() == "authsvc: --wait: must be a number of seconds from 0 to 3600"


def test_secrets_init_creates_private_files(tmp_path):
    result = run_command("secrets", "init", AUTHSVC_DATA_DIR=str(tmp_path), AUTHSVC_DATABASE_URL="postgresql://x@db/y")
    assert result.returncode == 0, result.stderr
    pepper = tmp_path / "secrets" / "password_pepper"
    keys = tmp_path / "keys" / "signing-keys.json"
    for path in (pepper, keys):
        assert path.stat().st_mode & 0o777 == 0o600
    assert pepper.read_text().strip() not in result.stdout + result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr


def test_keys_commands_rotate_and_prune(tmp_path):
    env = {"AUTHSVC_DATA_DIR": str(tmp_path)}
    first = run_command("keys", "generate", **env)
    assert first.returncode == 0, first.stderr
    second = run_command("keys", "generate", **env)
    rotated = run_command("keys", "rotate", **env)
    listing = run_command("keys", "list", **env).stdout
    assert listing.count("active") == 1 and listing.count("published") == 1 and listing.count("retired") == 1
    assert "PRIVATE KEY" not in first.stdout + second.stdout + rotated.stdout + listing
    # Nothing retired long enough ago yet: prune keeps every key.
    assert "removed 0" in run_command("keys", "prune", **env).stdout
    bad = run_command("keys", "activate", "no-such-kid", **env)
    assert bad.returncode == 2 and bad.stderr.startswith("authsvc: no key no-such-kid")


def _children(pid: int) -> list[int]:
    """The processes whose parent is pid (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


async def test_serve_with_two_workers_shares_one_port_and_stops_cleanly(databases, tmp_path):
    url = databases.create(migrated=False)  # the parent migrates once, before the workers start
    settings = quick_settings(url, AUTHSVC_WORKERS="2")
    async with serving(tmp_path, **settings) as served, aiohttp.ClientSession() as http:
        workers = [pid for pid in _children(served.proc.pid) if "spawn" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2, workers
        async with http.post(served.base + "/users", json={"email": "w@example.com", "password": PASSWORD}) as resp:
            assert resp.status == 201
        # New connections land on either worker; every one answers, with the same data.
        for _ in range(10):
            async with aiohttp.ClientSession() as fresh:
                body = {"username": "w@example.com", "password": PASSWORD}
                async with fresh.post(served.base + "/auth", json=body) as resp:
                    assert resp.status == 200
    assert served.proc.returncode == 0
    assert "with 2 workers" in served.output
    assert served.output.count("applied migration") == len(migrate.discover())
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived the parent"


async def test_serve_on_an_external_database(databases, tmp_path):
    url = databases.create(migrated=False)  # serve applies the migrations itself
    settings = quick_settings(url)
    async with serving(tmp_path, **settings) as served, aiohttp.ClientSession() as http:
        async with http.post(served.base + "/users", json={"email": "ext@example.com", "password": PASSWORD}) as resp:
            assert resp.status == 201
        async with http.post(served.base + "/auth", json={"username": "ext@example.com", "password": PASSWORD}) as r:
            assert r.status == 200
    assert served.proc.returncode == 0
    out = served.output
    assert settings["AUTHSVC_TOKEN_SECRET"] not in out and PASSWORD not in out


def _refused_in_one_line(result, port: int, words: str) -> None:
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"authsvc: 127.0.0.1:{port} is in use"), result.stderr
    assert words in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_port_served_already_is_refused_unless_sharing_is_asked_for(database_url, tmp_path, workers):
    settings = quick_settings(database_url, AUTHSVC_WORKERS=str(workers), AUTHSVC_MIGRATE_ON_START="false")
    async with serving(tmp_path, **settings) as first:
        port = urlsplit(first.base).port
        # Refused before anything starts (no database, no workers), whatever the workers would share.
        _refused_in_one_line(run_command("serve", "--port", str(port), **settings), port, "--reuse-port")
        assert listeners(first.base) == workers
        async with serving(tmp_path, "--reuse-port", port=port, **settings) as second:
            await all_workers_listening(first.base, 2 * workers)  # the kernel spreads connections over both
        assert second.proc.returncode == 0
        assert listeners(first.base) == workers
        async with aiohttp.ClientSession() as http, http.get(first.base + "/readyz") as resp:
            assert resp.status == 200  # the first serve is untouched
    assert first.proc.returncode == 0


@pytest.mark.parametrize(("args", "words"), [((), "--reuse-port"), (("--reuse-port",), "does not share it")])
def test_a_port_held_by_another_program_is_refused_in_one_line(database_url, args, words):
    with socket.socket() as other:  # bound without SO_REUSEPORT: nobody can share it
        port = free_port()
        other.bind(("127.0.0.1", port))
        other.listen()
        result = run_command("serve", "--port", str(port), *args, **quick_settings(database_url))
    _refused_in_one_line(result, port, words)


@pytest.mark.slow
async def test_serve_embedded_keeps_data_and_secrets_across_restarts(tmp_path):
    """The README's run command: no database URL, a private PostgreSQL in the data dir."""
    settings = {"AUTHSVC_BCRYPT_ROUNDS": "4"}  # data dir: the default ./.authsvc under cwd
    credentials = {"username": "first@example.com", "password": PASSWORD}
    async with serving(tmp_path, **settings) as served, aiohttp.ClientSession() as http:
        async with http.post(served.base + "/users", json={"email": "first@example.com", "password": PASSWORD}) as r:
            assert r.status == 201
        async with http.post(served.base + "/auth", json=credentials) as resp:
            token = (await resp.json())["access_token"]
    assert served.proc.returncode == 0
    out = served.output
    assert "embedded PostgreSQL" in out and str(tmp_path / ".authsvc" / "pgdata") in out
    secret_file = tmp_path / ".authsvc" / "secrets" / "password_pepper"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert secret_file.read_text().strip() not in out

    async with serving(tmp_path, **settings) as served, aiohttp.ClientSession() as http:
        # Same user, and the token of the first run still verifies: data and secret were kept.
        async with http.get(served.base + "/users/me", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["email"] == "first@example.com"
        async with http.post(served.base + "/auth", json=credentials) as resp:
            assert resp.status == 200
    assert served.proc.returncode == 0
