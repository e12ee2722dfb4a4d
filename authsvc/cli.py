"""The `authsvc` command: serve, migrate, secrets."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from datetime import timedelta

import asyncpg

from . import config, embedded, migrate, secretfiles, workers
from .config import ConfigError, Settings
from .db import UNAVAILABLE_ERRORS
from .keyring import KeyError_, KeyFile

log = logging.getLogger("authsvc")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authsvc", description="Authentication service on aiohttp and PostgreSQL.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service (applies pending migrations first)")
    serve.add_argument("--host", help="address to listen on (AUTHSVC_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (AUTHSVC_PORT, default 8080)")
    serve.add_argument("--workers", type=int, help="worker processes on the port (AUTHSVC_WORKERS, default: cores)")
    sub.add_parser("migrate", help="apply pending database migrations and exit")
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
    return parser


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
    embedded_mode = settings.embedded
    settings = secretfiles.resolve(_with_database(settings), generate=embedded_mode)
    if count == 1:
        workers.run(settings)
        return
    # Migrate once here rather than racing N workers for the lock; with the database away,
    # the workers start anyway and migrate (one at a time, under the lock) once it is back.
    if settings.migrate_on_start:
        try:
            asyncio.run(_migrate(settings))
        except UNAVAILABLE_ERRORS as exc:
            log.warning("database unavailable at start (%s): the workers migrate when it is back", type(exc).__name__)
        else:
            settings = settings.replace(migrate_on_start=False)
    code = workers.run_many(settings, count)
    if code:
        raise SystemExit(code)


async def _migrate(settings: Settings) -> list[migrate.Migration]:
    conn = await asyncpg.connect(settings.database_url, timeout=settings.db_connect_timeout)
    try:
        return await migrate.migrate(conn)
    finally:
        await conn.close()


def _run(argv: Sequence[str] | None) -> None:
    args = _parser().parse_args(argv)
    settings = config.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        _serve(settings, args)
    elif args.command == "migrate":
        applied = asyncio.run(_migrate(_with_database(settings)))
        print(f"authsvc: {len(applied)} migration(s) applied" + "".join(f"\n  {m.version:04d}_{m.name}" for m in applied))
    elif args.command == "secrets":
        secretfiles.resolve(settings, generate=True)
        print(f"authsvc: secrets ready in {settings.data_dir / 'secrets'}")
    elif args.command == "keys":
        _keys(settings, args.action, args.kid)


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
    except KeyError_ as exc:
        print(f"authsvc: {exc}", file=sys.stderr)
        return 2
    except migrate.MigrationError as exc:
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
