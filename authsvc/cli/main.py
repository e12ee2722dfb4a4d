"""The `authsvc` command: serve, migrate, secrets, keys; operator commands in operator.py."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg

from authsvc import settings as config
from authsvc.auth.keyring import KeyFile, KeyFileError
from authsvc.cli import admin as operator
from authsvc.cli import clients as client_commands
from authsvc.cli import secretfiles, workers
from authsvc.db import embedded, migrate
from authsvc.db.pool import (
    RETRY_FIRST,
    RETRY_MAX,
    UNAVAILABLE_ERRORS,
    check_pool_connection,
    connect_for_migrations,
)
from authsvc.observability import logs
from authsvc.settings import ConfigError, Settings

log = logging.getLogger("authsvc")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authsvc", description="Authentication service on aiohttp and PostgreSQL.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service (applies pending migrations first)")
    serve.add_argument("--host", help="address to listen on (AUTHSVC_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (AUTHSVC_PORT, default 8080)")
    serve.add_argument("--workers", type=int, help="worker processes on the port (AUTHSVC_WORKERS, default: cores)")
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with a server already listening on it (SO_REUSEPORT), e.g. while replacing it; "
        "without this, a port in use is refused",
    )
    migrate_cmd = sub.add_parser("migrate", help="apply pending database migrations and exit")
    migrate_cmd.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="while the database is not up yet (refused, starting, its host unknown), keep trying this long "
        "(default 0: fail at once); a refused login or a database ahead of the code still fails at once",
    )
    secrets = sub.add_parser("secrets", help="manage secret files in AUTHSVC_DATA_DIR")
    secrets.add_argument(
        "action", choices=["init"], help="init: create the missing secret files and signing keys (mode 0600)"
    )
    keys = sub.add_parser("keys", help="manage the token signing keys (AUTHSVC_SIGNING_KEYS_FILE)")
    keys.add_argument(
        "action",
        choices=["list", "generate", "rotate", "activate", "prune"],
        help="list; generate: add a key, published but not signing (active only if none is); "
        "rotate: add a key and sign with it, retiring the old one; activate KID; "
        "prune: drop retired keys whose tokens have all expired",
    )
    keys.add_argument("kid", nargs="?", help="the key to activate")
    _operator_parsers(sub)
    return parser


def _operator_parsers(sub: Any) -> None:
    users = sub.add_parser("users", help="create, disable or enable a user, or set their roles").add_subparsers(
        dest="action", required=True
    )
    create = users.add_parser("create", help="create a user, as POST /users does")
    create.add_argument("email", metavar="EMAIL")
    create.add_argument("--first-name")
    create.add_argument("--last-name")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (else it is asked for twice)"
    )
    create.add_argument("--role", help="the user's role (default: AUTHSVC_DEFAULT_ROLE)")
    for action, what in (("disable", "no login, every session ends"), ("enable", "logging in works again")):
        users.add_parser(action, help=f"{action} a user: {what}").add_argument("email", metavar="EMAIL")
    roles = users.add_parser(
        "roles", help="give a user exactly these roles (AUTHSVC_ROLES); fewer scopes end their sessions"
    )
    roles.add_argument("email", metavar="EMAIL")
    roles.add_argument("roles", metavar="ROLE", nargs="+")
    throttle = sub.add_parser("throttle", help="reset login throttling").add_subparsers(dest="action", required=True)
    reset = throttle.add_parser("reset", help="forget the failed logins of an account (every address) or an address")
    reset.add_argument("email", metavar="EMAIL", nargs="?")
    reset.add_argument("--address", metavar="IP", help="also clear this address's budget and block")
    client_commands.add_parser(sub)
    sub.add_parser("settings", help="print the effective settings, secrets masked")


def _with_database(settings: Settings) -> Settings:
    if settings.database_url is not None:
        return settings
    url, pgdata = embedded.start(settings.data_dir)
    print(f"authsvc: embedded PostgreSQL, data kept in {pgdata}", file=sys.stderr)
    return settings.replace(database_url=url)


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    if args.host:
        settings = settings.replace(host=args.host)
    if args.port is not None:
        if not 1 <= args.port <= 65535:
            raise ConfigError("--port", "must be from 1 to 65535")
        settings = settings.replace(port=args.port)
    count = settings.workers if args.workers is None else args.workers
    if not 1 <= count <= 256:
        raise ConfigError("--workers", "must be from 1 to 256")
    settings = settings.replace(workers=count)  # each worker knows how many share the port
    workers.check_port(settings.host, settings.port, shared=args.reuse_port)  # before the database starts
    embedded_mode = settings.embedded
    settings = secretfiles.resolve(_with_database(settings), generate=embedded_mode)
    if count == 1:
        workers.run(settings)
        return
    # Migrate once here rather than racing N workers for the lock; with the database away
    # (or still locked by another instance's migration after a while), the workers start
    # anyway and migrate, one at a time under the lock, once it is ready.
    answers = True
    if settings.migrate_on_start:
        try:
            asyncio.run(_migrate(settings, within=settings.db_connect_timeout + settings.db_statement_timeout))
        except UNAVAILABLE_ERRORS as exc:  # TimeoutError included
            log.warning("database not ready at start (%s): the workers migrate when it is", type(exc).__name__)
            answers = False
        else:
            settings = settings.replace(migrate_on_start=False)
    if answers:
        # Said here in one line rather than by every worker: a PgBouncer without
        # AUTHSVC_DB_PGBOUNCER, or behind one, no statement timeout from PostgreSQL.
        with contextlib.suppress(*UNAVAILABLE_ERRORS):  # the workers see for themselves once it answers
            asyncio.run(check_pool_connection(settings))
    code = workers.run_many(settings, count)
    if code:
        raise SystemExit(code)


async def _migrate(settings: Settings, within: float | None = None, wait: float = 0.0) -> list[migrate.Migration]:
    async with asyncio.timeout(within):
        conn = await _connect(settings, wait)
        try:
            return await migrate.migrate(conn)
        finally:
            await conn.close()


# What a connection attempt meets while no database is up yet: nothing listens, its host is
# not known yet, the server is starting or being restarted (as the postgres image does
# after its first initialisation). A refused login (28xxx) or a missing database (3D000)
# is the database's answer, a misconfiguration: never waited out.
NOT_UP_YET: tuple[type[BaseException], ...] = (
    OSError,  # includes TimeoutError
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


async def _connect(settings: Settings, wait: float) -> asyncpg.Connection:
    """The migrations' connection; while the database is not up yet, tried again for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    delay: float | None = None
    while True:
        try:
            return await connect_for_migrations(settings)
        except NOT_UP_YET as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            if delay is None:  # said once, not at every try
                log.warning("database not up yet (%s): trying again for up to %g s", type(exc).__name__, wait)
            delay = RETRY_FIRST if delay is None else min(delay * 2, RETRY_MAX)
            await asyncio.sleep(min(delay, left))


def _run(argv: Sequence[str] | None) -> None:
    args = _parser().parse_args(argv)
    settings = config.from_env()
    logs.setup(settings.log_level, settings.log_format)
    if args.command == "serve":
        _serve(settings, args)
    elif args.command == "migrate":
        if not 0 <= args.wait <= 3600:
            raise ConfigError("--wait", "must be a number of seconds from 0 to 3600")
        applied = asyncio.run(_migrate(_with_database(settings), wait=args.wait))
        print(f"authsvc: {len(applied)} migration(s) applied" + "".join(f"\n  {m.version:04d}_{m.name}" for m in applied))
    elif args.command == "secrets":
        secretfiles.resolve(settings, generate=True)
        print(f"authsvc: secrets ready in {settings.data_dir / 'secrets'}")
    elif args.command == "keys":
        _keys(settings, args.action, args.kid)
    elif args.command == "settings":
        print("\n".join(operator.settings_lines(settings, os.environ)))
    elif args.command == "users":
        if args.action == "create":  # hash with the service's own pepper (generated as `serve` would)
            settings = secretfiles.resolve_pepper(settings)
        operator.users_command(settings, args, _with_database)
    elif args.command == "throttle":
        operator.throttle_command(settings, args, _with_database)
    elif args.command == "clients":
        client_commands.clients_command(settings, args, _with_database)


def _keys(settings: Settings, action: str, kid: str | None) -> None:
    if settings.token_algorithm == "HS256":
        raise ConfigError("AUTHSVC_TOKEN_ALGORITHM", "HS256 signs with AUTHSVC_TOKEN_SECRET: there is no key file")
    doc = KeyFile.load(settings.keys_file)
    if action == "generate":
        print(f"authsvc: generated key {doc.generate(settings.token_algorithm, activate=False)}")
    elif action == "rotate":
        print(f"authsvc: generated key {doc.generate(settings.token_algorithm, activate=True)}, now signing")
    elif action == "activate":
        if not kid:
            raise ConfigError("kid", "name the key to activate (see `authsvc keys list`)")
        doc.activate(kid)
        print(f"authsvc: key {kid} now signing")
    elif action == "prune":
        keep = timedelta(seconds=settings.access_token_ttl + settings.token_leeway)
        print(f"authsvc: removed {len(doc.prune(keep))} retired key(s)")
    if action != "list":
        doc.save()
    for entry in doc.entries:
        state = "active" if entry["kid"] == doc.active else f"retired {entry['retired_at']}" if entry[
            "retired_at"
        ] else "published"
        print(f"  {entry['kid']}  {entry['alg']}  created {entry['created_at']}  {state}")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        _run(argv)
    except ConfigError as exc:
        print(f"authsvc: {exc}", file=sys.stderr)
        return 2
    except KeyFileError as exc:
        print(f"authsvc: {exc}", file=sys.stderr)
        return 2
    except (migrate.MigrationError, operator.CommandFailed) as exc:
        print(f"authsvc: {exc}", file=sys.stderr)
        return 1
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"authsvc: database error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # unreachable database, port in use, unwritable data dir
        print(f"authsvc: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
