"""Operator commands against a real database, checked through a real app over HTTP."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import sys
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from helpers import PASSWORD, assert_error, bearer, login, operator_env, signup

from authsvc import settings as config
from authsvc.appkeys import HASHER, SESSIONS
from authsvc.appkeys import POOL as POOL_KEY
from authsvc.cli import main as cli
from authsvc.db.repo import users

COMMAND = [sys.executable, "-m", "authsvc"]
EMAIL = "ada@example.com"
WRONG = "not the right password"
BEHIND_LOCAL_PROXY = (ipaddress.ip_network("127.0.0.1/32"),)


async def run(env: dict[str, str], *args: str, stdin: str = "") -> tuple[int, str, str]:
    """`authsvc ARGS` as a real process; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()




async def answer(client: TestClient, password: str, forwarded_for: str | None = None) -> tuple[int, Any]:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else None
    resp = await client.post("/auth", json={"username": EMAIL, "password": password}, headers=headers)
    return resp.status, await resp.json()


# --- users create ---


async def test_a_user_created_on_the_command_line_logs_in_over_http(client, settings, tmp_path):
    args = ["users", "create", EMAIL, "--first-name", "Ada", "--password-stdin"]
    code, out, err = await run(operator_env(settings, tmp_path), *args, stdin=PASSWORD + "\n")
    assert code == 0, err
    assert out.startswith(f"authsvc: created user 1 {EMAIL}") and PASSWORD not in out + err
    token = await login(client, EMAIL)  # hashed with the service's pepper at its cost
    me = await (await client.get("/users/me", headers=bearer(token))).json()
    assert (me["email"], me["first_name"], me["last_name"]) == (EMAIL, "Ada", None)


async def test_create_applies_the_signup_rules(client, settings, tmp_path):
    await signup(client, "taken@example.com")
    env = operator_env(settings, tmp_path)
    # Case-insensitive duplicate: ran, but could not do it.
    code, out, err = await run(env, "users", "create", "TAKEN@example.com", "--password-stdin", stdin=PASSWORD)
    assert (code, out) == (1, "") and err == "authsvc: a user with email TAKEN@example.com exists already\n"
    # The password is exactly what was piped in, trailing spaces included; only the newline goes.
    spaced = PASSWORD + "  "
    code, _, err = await run(env, "users", "create", EMAIL, "--password-stdin", stdin=spaced + "\r\n")
    assert code == 0, err
    assert (await answer(client, PASSWORD))[0] == 401
    assert (await answer(client, spaced))[0] == 200
    # Bad input is refused before any work, in one line, exit 2.
    for args, stdin, message in [
        (["not-an-email"], PASSWORD, "authsvc: EMAIL: Not a valid email address."),
        (["short@example.com"], "short", "authsvc: password: Length must be between 8 and 1024."),
        (["x@example.com", "--first-name", "n" * 101], PASSWORD, "authsvc: --first-name: Longer than maximum"),
    ]:
        code, _, err = await run(env, "users", "create", *args, "--password-stdin", stdin=stdin)
        assert code == 2 and err.startswith(message) and len(err.splitlines()) == 1, err
    # No password on argv, ever; without a terminal it must be piped in explicitly.
    code, _, err = await run(env, "users", "create", "x@example.com", stdin=PASSWORD)
    assert code == 2 and err.startswith("authsvc: --password-stdin: stdin is not a terminal")
    code, _, _ = await run(env, "users", "create", "x@example.com", "--password", PASSWORD)
    assert code == 2  # argparse: no such option


# --- users disable / enable ---


async def test_create_refuses_a_guessable_password_in_one_line(settings, tmp_path, db):
    """The password policy of POST /users, reached through the same Accounts.signup."""
    env = operator_env(settings, tmp_path)
    for args, password, message in [
        ([EMAIL], "Password1", "authsvc: password: This password is too easy to guess. This is a very common"),
        ([EMAIL, "--last-name", "Quillfeather"], "Quillfeather", "authsvc: password: This password is made from"),
        ([EMAIL], EMAIL, "authsvc: password: This password is made from the account's email address or name"),
    ]:
        code, out, err = await run(env, "users", "create", *args, "--password-stdin", stdin=password + "\n")
        assert (code, out) == (2, "") and err.startswith(message) and len(err.splitlines()) == 1, err
    assert await db.fetch("SELECT id FROM users") == []


async def test_disable_ends_every_session_and_login_answers_as_a_wrong_password(client, settings, tmp_path, db):
    await signup(client, EMAIL)
    pairs = []
    for _ in range(2):
        resp = await client.post("/auth", json={"username": EMAIL, "password": PASSWORD})
        pairs.append(await resp.json())
    wrong = await answer(client, WRONG)
    assert wrong[0] == 401

    code, out, err = await run(operator_env(settings, tmp_path), "users", "disable", EMAIL)
    assert code == 0, err
    assert out == f"authsvc: user 1 {EMAIL} disabled; 2 session(s) ended\n"

    for pair in pairs:
        # The access tokens are still well signed and unexpired: authsvc refuses them at once.
        await assert_error(await client.get("/users/me", headers=bearer(pair["access_token"])), 401, "invalid_token")
        resp = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        await assert_error(resp, 400, "invalid_grant")
    # The right password gets exactly the wrong password's answer, after the same bcrypt check,
    # and counts as a failure like it (else the missing backoff would confirm the password).
    hasher = client.app[HASHER]
    failures = await db.fetchval("SELECT failures FROM login_backoff WHERE identifier = $1", EMAIL)
    checks = hasher.checks
    assert await answer(client, PASSWORD) == wrong
    assert hasher.checks == checks + 1
    assert await db.fetchval("SELECT failures FROM login_backoff WHERE identifier = $1", EMAIL) == failures + 1
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE revoked_reason = 'disabled'") == 2
    # A session begun by a login that passed its check just before the disabling is dead too:
    # the query behind every request reads the session and the user together.
    async with client.app[POOL_KEY].acquire() as conn:
        user = await users.select_by_email(conn, EMAIL)
    assert user is not None and user.disabled_at is not None
    late = await client.app[SESSIONS].start(user)
    await assert_error(await client.get("/users/me", headers=bearer(late["access_token"])), 401, "invalid_token")
    resp = await client.post("/auth/refresh", json={"refresh_token": late["refresh_token"]})
    await assert_error(resp, 400, "invalid_grant")

    code, out, _ = await run(operator_env(settings, tmp_path), "users", "disable", EMAIL.upper())
    # Disabling again is harmless, and ends what a session like that left behind.
    assert code == 0 and "already disabled since" in out and "1 session(s) ended" in out


async def test_enable_lets_the_user_log_in_again_but_old_sessions_stay_ended(client, authsvc):
    await signup(client, EMAIL)
    old = await (await client.post("/auth", json={"username": EMAIL, "password": PASSWORD})).json()
    assert (await authsvc("users", "disable", EMAIL))[0] == 0
    assert (await answer(client, PASSWORD))[0] == 401

    code, out, err = await authsvc("users", "enable", EMAIL)
    assert code == 0, err
    assert out == f"authsvc: user 1 {EMAIL} enabled; earlier sessions stay ended\n"
    token = await login(client, EMAIL)
    assert (await client.get("/users/me", headers=bearer(token))).status == 200
    await assert_error(await client.get("/users/me", headers=bearer(old["access_token"])), 401, "invalid_token")
    resp = await client.post("/auth/refresh", json={"refresh_token": old["refresh_token"]})
    await assert_error(resp, 400, "invalid_grant")
    assert (await authsvc("users", "enable", EMAIL))[1] == f"authsvc: user 1 {EMAIL} was not disabled\n"


async def test_unknown_users_and_unmigrated_databases_are_one_line_and_exit_1(authsvc, databases, monkeypatch):
    for action in ("disable", "enable"):
        assert await authsvc("users", action, "nobody@example.com") == (
            1, "", "authsvc: no user with email nobody@example.com\n"
        )
    monkeypatch.setenv("AUTHSVC_DATABASE_URL", databases.create(migrated=False))
    code, _, err = await authsvc("users", "disable", EMAIL)
    assert code == 1 and err.startswith("authsvc: ") and "run `authsvc migrate` first" in err


async def test_disable_and_enable_find_the_account_by_a_look_alike_spelling(client, authsvc):
    """The commands normalise the address as a login does (authsvc/emails.py)."""
    await signup(client, EMAIL)
    fullwidth = "ＡＤＡ@ｅｘａｍｐｌｅ.ｃｏｍ"
    code, out, err = await authsvc("users", "disable", fullwidth)
    assert code == 0, err
    assert out == f"authsvc: user 1 {EMAIL} disabled; 0 session(s) ended\n"
    assert (await answer(client, PASSWORD))[0] == 401
    assert (await authsvc("users", "enable", "ada\u200b@example.com"))[0] == 0
    assert (await answer(client, PASSWORD))[0] == 200
    # A look-alike by skeleton only is another address: nobody here.
    assert await authsvc("users", "disable", "ada@examp1e.com") == (1, "", "authsvc: no user with email ada@examp1e.com\n")


async def test_create_refuses_a_look_alike_of_an_account(client, settings, tmp_path):
    await signup(client, EMAIL)
    code, _, err = await run(operator_env(settings, tmp_path), "users", "create", "ａｄａ@example.com", "--password-stdin", stdin=PASSWORD)
    assert (code, err) == (1, "authsvc: a user with email ada@example.com exists already\n")
    code, _, err = await run(operator_env(settings, tmp_path), "users", "create", "ada\u200b@example.com", "--password-stdin", stdin=PASSWORD)
    assert code == 2 and err.startswith("authsvc: EMAIL: Not a valid email address. Must not contain invisible"), err


# --- throttle reset ---


async def test_reset_unlocks_an_account_whose_budget_attackers_used_up(make_client, authsvc, db):
    # A burst of 2 failures for the account from all addresses together.
    client = await make_client(account_max_failures_per_hour=10, trusted_proxies=BEHIND_LOCAL_PROXY)
    await signup(client, EMAIL)
    for attacker in ("198.51.100.1", "198.51.100.2"):
        assert (await answer(client, WRONG, attacker))[0] == 401
    status, body = await answer(client, PASSWORD, "192.0.2.10")  # the owner, from a new address
    assert (status, body["error"]) == (429, "too_many_attempts")
    assert await db.fetchval("SELECT count(*) FROM login_backoff WHERE identifier = $1", EMAIL) == 2

    code, out, err = await authsvc("throttle", "reset", EMAIL.upper())  # as the login keys it: any case
    assert code == 0, err
    assert out.startswith(f"authsvc: throttling reset for {EMAIL.upper()}: 2 backoff pair(s), 1 budget(s) cleared")
    assert await db.fetchval("SELECT count(*) FROM login_backoff WHERE identifier = $1", EMAIL) == 0
    assert (await answer(client, PASSWORD, "192.0.2.10"))[0] == 200
    # The attackers' addresses start from scratch too, with a fresh budget.
    assert (await answer(client, WRONG, "198.51.100.1"))[0] == 401


async def test_reset_takes_the_account_in_any_spelling_a_login_takes(client, authsvc, db):
    await signup(client, EMAIL)
    resp = await client.post("/auth", json={"username": "ＡＤＡ@example.com", "password": WRONG})
    await assert_error(resp, 401, "invalid_credentials")
    assert await db.fetchval("SELECT count(*) FROM login_backoff WHERE identifier = $1", EMAIL) == 1
    code, out, err = await authsvc("throttle", "reset", "ａｄａ@ｅｘａｍｐｌｅ.ｃｏｍ")
    assert code == 0, err
    assert "1 backoff pair(s)" in out
    assert await db.fetchval("SELECT count(*) FROM login_backoff") == 0


async def test_reset_reaches_a_process_that_kept_the_refusal_in_memory(make_client, authsvc, db):
    memory_ms = 1000
    client = await make_client(
        login_backoff_base_ms=60_000, login_backoff_max_ms=60_000, max_sleeping=0, throttle_memory_ms=memory_ms
    )
    await signup(client, EMAIL)
    assert (await answer(client, WRONG))[0] == 401  # closes the pair for a minute
    loop = asyncio.get_running_loop()
    remembered_at = loop.time()
    resp = await client.post("/auth", json={"username": EMAIL, "password": PASSWORD})
    await assert_error(resp, 429, "too_many_attempts")  # asked the database, and remembered
    assert 55 <= int(resp.headers["Retry-After"]) <= 60

    assert (await authsvc("throttle", "reset", EMAIL))[0] == 0
    assert await db.fetchval("SELECT count(*) FROM login_backoff") == 0
    resp = await client.post("/auth", json={"username": EMAIL, "password": PASSWORD})
    if loop.time() - remembered_at < memory_ms / 1000 * 0.8:
        # The database has nothing against the pair: only memory can refuse, with the real wait.
        await assert_error(resp, 429, "too_many_attempts")
        assert 55 <= int(resp.headers["Retry-After"]) <= 60
    while resp.status == 429:
        assert loop.time() - remembered_at < memory_ms / 1000 + 2, "the refusal outlived the memory limit"
        await asyncio.sleep(0.05)
        resp = await client.post("/auth", json={"username": EMAIL, "password": PASSWORD})
    assert resp.status == 200


async def test_reset_of_an_address_lifts_its_block(make_client, authsvc):
    client = await make_client(
        address_max_failures_per_minute=5,  # a burst of 1
        address_block_seconds=900,
        trusted_proxies=BEHIND_LOCAL_PROXY,
        throttle_memory_ms=0,  # nothing kept in memory: the database answers every time
    )
    await signup(client, EMAIL)
    stuffer = "203.0.113.7"
    body = {"username": "someone@example.com", "password": WRONG}
    assert (await client.post("/auth", json=body, headers={"X-Forwarded-For": stuffer})).status == 401
    assert (await answer(client, PASSWORD, stuffer))[0] == 429  # blocked, for every account
    assert (await answer(client, PASSWORD, "203.0.113.8"))[0] == 200  # not the account's fault

    code, out, err = await authsvc("throttle", "reset", "--address", f"::ffff:{stuffer}")  # as a v6 socket saw it
    assert code == 0, err
    assert f"for address {stuffer}: 1 backoff pair(s), 1 budget(s) cleared" in out
    assert (await answer(client, PASSWORD, stuffer))[0] == 200

    assert await authsvc("throttle", "reset", "--address", "nowhere") == (
        2, "", "authsvc: --address: 'nowhere' is not an IP address\n"
    )
    code, _, err = await authsvc("throttle", "reset")
    assert code == 2 and err.startswith("authsvc: EMAIL: name the account")


# --- settings ---


def _secret() -> str:
    return secrets.token_urlsafe(48)


async def test_settings_show_every_setting_and_no_secret(settings, tmp_path):
    db_password, query_password = _secret(), _secret()
    secret_values = [db_password, query_password, _secret(), _secret(), _secret(), _secret()]
    env = operator_env(
        settings,
        tmp_path,
        AUTHSVC_DATABASE_URL=f"postgresql://authsvc:{db_password}@db.internal:5432/auth?password={query_password}",
        AUTHSVC_TOKEN_SECRET=secret_values[2],
        AUTHSVC_PASSWORD_PEPPER=secret_values[3],
        AUTHSVC_INTROSPECTION_CLIENTS=f"orders:{secret_values[4]},billing:{secret_values[5]}",
        AUTHSVC_PORT="9000",
        AUTHSVC_BREACHED_PASSWORDS_URL=f"https://mirror:{secret_values[1]}@pwned.internal",
    )
    code, out, err = await run(env, "settings")
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == [config.env_name(name) for name in config.FIELDS]
    shown = dict(line.split(None, 1) for line in lines)
    assert shown["AUTHSVC_DATABASE_URL"] == "postgresql://authsvc:***@db.internal:5432/auth?password=***"
    assert shown["AUTHSVC_TOKEN_SECRET"] == shown["AUTHSVC_PASSWORD_PEPPER"] == "***"
    assert shown["AUTHSVC_INTROSPECTION_CLIENTS"] == "orders:***,billing:***"
    assert shown["AUTHSVC_PORT"] == "9000" and shown["AUTHSVC_HOST"] == "127.0.0.1  [default]"
    assert shown["AUTHSVC_BREACHED_PASSWORDS_URL"] == "https://mirror:***@pwned.internal"
    _assert_no_secret(out + err, secret_values)

    # Secrets from the data dir are named by their file, and masked like the others.
    (tmp_path / "secrets").mkdir()
    pepper = _secret()
    (tmp_path / "secrets" / "password_pepper").write_text(pepper + "\n")
    del env["AUTHSVC_PASSWORD_PEPPER"]
    # An unescaped '/' in the password: all hidden. (Its first part must look like a port, or
    # the setting is refused before anything is shown: see test_config.)
    env["AUTHSVC_DATABASE_URL"] = f"postgresql://authsvc:5432/{db_password}@db/auth"
    code, out, err = await run(env, "settings")
    assert code == 0, err
    shown = dict(line.split(None, 1) for line in out.splitlines())
    assert shown["AUTHSVC_PASSWORD_PEPPER"] == f"***  [from {tmp_path / 'secrets' / 'password_pepper'}]"
    assert shown["AUTHSVC_DATABASE_URL"] == "postgresql://***"
    _assert_no_secret(out + err, [*secret_values, pepper])


def _assert_no_secret(output: str, values: list[str]) -> None:
    """Not a secret, nor any 8 characters of one in a row."""
    for value in values:
        for i in range(len(value) - 7):
            assert value[i : i + 8] not in output, "part of a secret was printed"


async def test_settings_refuse_a_bad_environment_like_serve(settings, tmp_path):
    code, out, err = await run(operator_env(settings, tmp_path, AUTHSVC_THROTTLE_MEMORY_MS="forever"), "settings")
    assert (code, out) == (2, "") and err.startswith("authsvc: AUTHSVC_THROTTLE_MEMORY_MS: must be a whole number")


def test_the_documented_examples_parse():
    operations = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    example = operations.split("## Operator commands", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line for line in example.splitlines() if "authsvc " in line and not line.startswith("#")]
    commands = [line.split("authsvc ", 1)[1] for line in lines]
    assert len(commands) == 7  # users create, disable, enable, roles; throttle reset twice; settings
    parser = cli._parser()
    for command in commands:
        parser.parse_args(command.split())
