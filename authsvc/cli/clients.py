"""`authsvc clients create | list | rotate | retire | disable | enable | delete`: the service
code the admin API runs (auth/clients.py), with "operator" as the actor. A secret is printed
once, on stdout, and never again."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authsvc.auth.assertions import ClientKeys
from authsvc.auth.clients import JWT_METHOD, SECRET_METHOD, Clients
from authsvc.auth.principal import OPERATOR
from authsvc.auth.scopes import ScopeModel
from authsvc.auth.throttle import LoginThrottle
from authsvc.auth.throttle.policy import Limits
from authsvc.cli.admin import CommandFailed, _pool
from authsvc.db.repo.clients import Client
from authsvc.errors import ApiError
from authsvc.settings import ConfigError, Settings

ADDRESS = "local"  # the audit record's address of an operator's command


def _jwks_source(value: str) -> tuple[dict[str, Any] | None, str | None]:
    """--jwks: a URL is kept as the client's jwks_uri, a file is read as its JWK Set."""
    if value.startswith(("https://", "http://")):
        return None, value
    try:
        return json.loads(Path(value).read_text(encoding="utf-8")), None
    except (OSError, ValueError) as exc:
        raise ConfigError("--jwks", f"cannot read a JWK Set from {value}: {exc}") from None


def _line(client: Client) -> str:
    state = "disabled" if client.disabled_at else "enabled"
    return (
        f"  {client.id}  {client.name}  {client.auth_method}  scopes={' '.join(client.scopes) or '-'}"
        f"  ttl={client.token_ttl}s  {state}"
    )


async def _run(settings: Settings, args: Any) -> list[str]:
    async with _pool(settings) as pool:
        # These commands authenticate nobody and issue no token: no signing keys, and a
        # throttle that is never asked.
        throttle = LoginThrottle(pool, Limits.from_settings(settings), 1, 1)
        scopes = ScopeModel.from_settings(settings)
        no_tokens: Any = None
        clients = Clients(pool, scopes, no_tokens, throttle, ClientKeys(), (), settings.token_leeway, clock=time.time)
        action = args.action
        try:
            if action == "create":
                jwks, jwks_uri = _jwks_source(args.jwks) if args.jwks else (None, None)
                method = JWT_METHOD if args.jwks else SECRET_METHOD
                client, secret = await clients.create(
                    args.name, args.scopes.split(), method, jwks, jwks_uri, args.token_ttl, OPERATOR, ADDRESS
                )
                lines = [f"authsvc: created client {client.id} {client.name}", _line(client)]
                if secret is not None:
                    lines.append(f"client_secret: {secret}")
                return lines
            if action == "list":
                return [_line(c) for c in await clients.list_all()]
            if action == "rotate":
                secret = await clients.rotate(args.id, OPERATOR, ADDRESS)
                return [f"authsvc: new secret for {args.id}; the old ones work until `clients retire`",
                        f"client_secret: {secret}"]
            if action == "retire":
                return [f"authsvc: {await clients.retire(args.id, OPERATOR, ADDRESS)} secret(s) of {args.id} retired"]
            if action in ("disable", "enable"):
                client = await clients.set_disabled(args.id, action == "disable", OPERATOR, ADDRESS)
                return [f"authsvc: client {client.id} {action}d", _line(client)]
            await clients.delete(args.id, OPERATOR, ADDRESS)
            return [f"authsvc: client {args.id} deleted"]
        except ApiError as exc:  # unknown id, a name taken, an unknown scope, a bad JWK Set
            raise CommandFailed(exc.message) from None


def clients_command(settings: Settings, args: Any, with_database: Callable[[Settings], Settings]) -> None:
    if args.action == "create":
        if args.secret and args.jwks:
            raise ConfigError("--jwks", "a client has a secret or keys, not both")
        if not 60 <= args.token_ttl <= 86_400:
            raise ConfigError("--token-ttl", "must be from 60 to 86400 seconds")
    print("\n".join(asyncio.run(_run(with_database(settings), args))))


def add_parser(sub: Any) -> None:
    clients = sub.add_parser("clients", help="register and manage OAuth2 clients (client_credentials)")
    actions = clients.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="register a client; its secret is printed once")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--scopes", default="", help='the scopes it may have, space-separated ("a b")')
    method = create.add_mutually_exclusive_group()
    method.add_argument("--secret", action="store_true", help="authenticates with a secret (the default)")
    method.add_argument("--jwks", metavar="FILE_OR_URL", help="private_key_jwt with these public keys")
    create.add_argument("--token-ttl", type=int, default=900, metavar="S", help="its tokens' lifetime (default 900)")
    actions.add_parser("list", help="every client")
    for action, what in (
        ("rotate", "add a secret (printed once); the old ones work until retired"),
        ("retire", "retire every secret but the newest"),
        ("disable", "no new token; its tokens are refused at once"),
        ("enable", "enable again"),
        ("delete", "delete the client and its secrets"),
    ):
        actions.add_parser(action, help=what).add_argument("id", metavar="ID")
