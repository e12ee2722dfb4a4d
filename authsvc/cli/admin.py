"""Operator commands: `authsvc users create | disable | enable | roles`, `throttle reset`, `settings`.

They act on the database directly (users: through the admin API's own service, recorded with
the actor `operator`), so they work whether or not the service is running, and
a running service sees the change on its next request (a throttling refusal it keeps in
memory: within `throttle_memory_ms`). Passwords are never taken from the command line, where
`ps` and the shell history would show them.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TextIO

from marshmallow import ValidationError

from authsvc import settings as config
from authsvc.auth.accounts import Accounts
from authsvc.auth.admin_users import Change, UserAdmin
from authsvc.auth.passwords import PasswordHasher
from authsvc.auth.principal import OPERATOR_ADDRESS
from authsvc.auth.scopes import ScopeModel
from authsvc.auth.throttle import normalise
from authsvc.cli import secretfiles
from authsvc.db import pool as db
from authsvc.db.repo import login_backoff, login_budgets
from authsvc.db.repo.users import User
from authsvc.errors import EmailTaken, NotFound, PasswordRefused, UnknownRole
from authsvc.http.breached import open_policy
from authsvc.http.schemas import SignupSchema
from authsvc.settings import ConfigError, Settings, env_name
from authsvc.settings.networks import parse_ip


class CommandFailed(Exception):
    """The command ran but could not do what was asked (exit code 1)."""


@asynccontextmanager
async def _pool(settings: Settings) -> AsyncIterator[db.Database]:
    """The service's own database object (same timeouts), refusing a schema that is behind."""
    database = db.Database(settings.replace(db_pool_min=1, db_pool_max=1, migrate_on_start=False))
    try:
        await database.open()  # MigrationError (exit 1) when migrations are pending
        yield database
    finally:
        await database.close()


# --- users ---


def read_password(from_stdin: bool, stdin: TextIO | None = None) -> str:
    """One line from stdin (--password-stdin), else typed twice at the terminal."""
    stdin = stdin or sys.stdin
    if from_stdin:
        line = stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")  # the rest is the password as typed
    if not stdin.isatty():
        raise ConfigError("--password-stdin", "stdin is not a terminal: pipe the password in with this option")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise ConfigError("password", "the two entries differ")
    return first


def check_signup(email: str, password: str | None, first_name: str | None, last_name: str | None) -> dict[str, Any]:
    """The same rules as POST /users (without a password: all but it); a ConfigError naming
    the first bad value otherwise."""
    body = {"email": email, "password": password, "first_name": first_name, "last_name": last_name}
    labels = {"email": "EMAIL", "password": "password", "first_name": "--first-name", "last_name": "--last-name"}
    schema = SignupSchema(partial=("password",) if password is None else ())
    try:
        return schema.load({k: v for k, v in body.items() if v is not None})
    except ValidationError as exc:
        field, messages = sorted(exc.normalized_messages().items())[0]
        raise ConfigError(labels.get(field, field), " ".join(messages)) from None


async def create_user(settings: Settings, data: dict[str, Any], role: str | None = None) -> User:
    assert settings.password_pepper is not None, "resolve the pepper first (secretfiles.resolve_pepper)"
    hasher = PasswordHasher(settings.password_pepper, settings.bcrypt_rounds, workers=1, queue=1)
    try:
        async with _pool(settings) as pool, open_policy(settings) as policy:
            # The service POST /users uses, without a signup budget: the operator has none.
            accounts = Accounts(pool, hasher, policy, default_role=role or settings.default_role)
            try:
                return await accounts.signup(
                    data["email"], data["password"], data.get("first_name"), data.get("last_name")
                )
            except EmailTaken:
                raise CommandFailed(f"a user with email {data['email']} exists already") from None
            except PasswordRefused as exc:  # a bad argument, like a password that is too short
                raise ConfigError("password", exc.message) from None
    finally:
        hasher.close()


@asynccontextmanager
async def _user_admin(settings: Settings) -> AsyncIterator[UserAdmin]:
    """The service the admin API uses (audit records and all), acting as the operator."""
    async with _pool(settings) as pool:
        yield UserAdmin(pool, ScopeModel.from_settings(settings))


async def set_disabled(settings: Settings, email: str, disabled: bool) -> tuple[User, Change]:
    """Disable or enable; return the user as it was and what the change did."""
    async with _user_admin(settings) as admin:
        user = await _by_email(admin, email)
        if disabled:
            # Refresh tokens die with their session; access tokens are refused at authsvc on
            # their next request, since every request reads the session and the user together.
            return user, await admin.disable(None, user.id, OPERATOR_ADDRESS)
        return user, await admin.enable(None, user.id, OPERATOR_ADDRESS)


async def set_roles(settings: Settings, email: str, roles: list[str]) -> Change:
    async with _user_admin(settings) as admin:
        user = await _by_email(admin, email)
        try:
            return await admin.set_roles(None, user.id, roles, OPERATOR_ADDRESS)
        except UnknownRole as exc:
            raise ConfigError("ROLE", exc.message) from None


async def _by_email(admin: UserAdmin, email: str) -> User:
    try:
        return await admin.by_email(email)
    except NotFound:
        raise CommandFailed(f"no user with email {email}") from None


def users_command(settings: Settings, args: Any, with_database: Callable[[Settings], Settings]) -> None:
    """`users create | disable | enable EMAIL`, `users roles EMAIL ROLE...`; the database is
    started (embedded) only after the arguments passed their checks."""
    action, email = args.action, args.email
    if action == "create":
        role = args.role or settings.default_role
        if role not in dict(settings.roles):
            raise ConfigError("--role", f"{role!r} is not one of AUTHSVC_ROLES")
        check_signup(email, None, args.first_name, args.last_name)  # before asking for the password
        data = check_signup(email, read_password(args.password_stdin), args.first_name, args.last_name)
        user = asyncio.run(create_user(with_database(settings), data, role))
        print(f"authsvc: created user {user.id} {user.email}" + (f" with role {role}" if args.role else ""))
        return
    if action == "roles":
        change = asyncio.run(set_roles(with_database(settings), email, args.roles))
        user = change.user
        ended = f"; {change.sessions_ended} session(s) ended" if change.sessions_ended else ""
        print(f"authsvc: user {user.id} {user.email} roles: {' '.join(sorted(user.roles)) or '(none)'}{ended}")
        return
    user, change = asyncio.run(set_disabled(with_database(settings), email, action == "disable"))
    if action == "disable":
        state = "disabled" if change.changed else f"already disabled since {user.disabled_at:%Y-%m-%d %H:%M:%S %Z}"
        print(f"authsvc: user {user.id} {user.email} {state}; {change.sessions_ended} session(s) ended")
    else:
        state = "enabled; earlier sessions stay ended" if change.changed else "was not disabled"
        print(f"authsvc: user {user.id} {user.email} {state}")


# --- throttling ---


def _address(raw: str) -> str:
    """The key the login budgets use for this address (see addresses.py)."""
    ip = parse_ip(raw)
    if ip is None:
        raise ConfigError("--address", f"{raw!r} is not an IP address")
    return str(ip)


async def reset_throttle(settings: Settings, identifier: str | None, address: str | None) -> tuple[int, int]:
    """Forget the failures of an account and/or an address; return (pairs, budgets) cleared."""
    key = normalise(identifier) if identifier is not None else None

    async def work(conn: Any) -> tuple[int, int]:
        # In the login path's lock order (auth/throttle/claims.py).
        budgets = 0
        if address is not None:
            budgets += await login_budgets.forget(conn, "address", address)
        pairs = await login_backoff.forget(conn, identifier=key, address=address)
        if key is not None:
            budgets += await login_budgets.forget(conn, "account", key)
        return pairs, budgets

    async with _pool(settings) as pool, pool.acquire() as conn:
        return await db.in_transaction(conn, work)


def throttle_command(settings: Settings, args: Any, with_database: Callable[[Settings], Settings]) -> None:
    """`throttle reset [EMAIL] [--address IP]`."""
    identifier, raw_address = args.email, args.address
    if identifier is None and raw_address is None:
        raise ConfigError("EMAIL", "name the account to reset, or give --address IP")
    address = _address(raw_address) if raw_address is not None else None
    pairs, budgets = asyncio.run(reset_throttle(with_database(settings), identifier, address))
    what = " and ".join(x for x in (identifier, address and f"address {address}") if x)
    print(
        f"authsvc: throttling reset for {what}: {pairs} backoff pair(s), {budgets} budget(s) cleared; "
        f"running processes follow within {settings.throttle_memory_ms / 1000:g} s"
    )


# --- settings ---


def _shown(settings: Settings, name: str) -> str:
    if name in config.SECRETS and getattr(settings, name) is None:
        if secretfiles.secret_path(settings.data_dir, name).exists():
            return config.MASK
    return config.shown(settings, name)


def settings_lines(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """Every setting with its variable, value (secrets masked) and where it came from."""
    width = max(len(env_name(name)) for name in config.FIELDS)
    return [
        f"{env_name(name):<{width}}  {_shown(settings, name)}{_source(settings, name, environ)}"
        for name in config.FIELDS
    ]


def _source(settings: Settings, name: str, environ: Mapping[str, str]) -> str:
    if env_name(name) in environ:
        return ""
    if name in config.SECRETS:
        path = secretfiles.secret_path(settings.data_dir, name)
        if getattr(settings, name) is None and path.exists():
            return f"  [from {path}]"
    return "  [default]"
