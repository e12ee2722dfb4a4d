"""Settings: read once from AUTHSVC_* variables, validated, frozen.

Every setting is declared once, as a field of ``Settings``: its type and default, its parser
(which holds the bounds), whether it is a secret, and one line of documentation. ``FIELDS``,
``from_env``, what `authsvc settings` shows and docs/settings.md's table (settings.table)
are all read from these declarations.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authsvc.settings import parse
from authsvc.settings.parse import (
    MIN_SECRET_CHARS,
    MIN_SECRET_DISTINCT,
    IPNetwork,
    check_secret,
)

__all__ = [
    "DECLARATIONS",
    "FIELDS",
    "MASK",
    "MIN_SECRET_CHARS",
    "MIN_SECRET_DISTINCT",
    "PRIVATE_NETWORKS",
    "SECRETS",
    "ConfigError",
    "IPNetwork",
    "Setting",
    "Settings",
    "check_secret",
    "env_name",
    "from_env",
    "mask_url",
    "shown",
    "validate",
]

PREFIX = "AUTHSVC_"
MASK = "***"
# Who may read /metrics by default: this host and private networks, never the internet.
PRIVATE_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(net)
    for net in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


# asyncpg's own default size of a connection's prepared-statement cache.
ASYNCPG_STATEMENT_CACHE = 100


# authsvc's own scopes (auth/scopes.py); AUTHSVC_SCOPES adds others'.
BUILTIN_SCOPES = frozenset({"profile", "todos", "admin", "introspect"})


class ConfigError(Exception):
    """A setting has a bad value; the message names the variable."""

    def __init__(self, var: str, problem: str) -> None:
        super().__init__(f"{var}: {problem}")
        self.var = var


@dataclass(frozen=True)
class Setting:
    """The declaration of one setting, kept in the metadata of its field of ``Settings``."""

    parse: Callable[[str], Any]  # the variable's text to the value; ValueError names the bounds
    doc: str  # one line: what the setting does, as docs/settings.md's table says it
    # The whole value is a secret: never shown, not in repr, and it may come from the file
    # <data dir>/secrets/<name> instead (authsvc.cli.secretfiles).
    secret: bool = False
    # The value holds a credential among other things (a URL's password): the value as shown,
    # that credential masked. Not in repr either.
    mask: Callable[[Any], Any] | None = None
    # The default as the docs show it, where the value itself would not say it ("number of cores").
    default_doc: str | None = None
    # What `authsvc settings` shows for an unset (None) value, from the other settings.
    unset: Callable[[Settings], str] | None = None


def setting(
    default: Any = dataclasses.MISSING,
    parser: Callable[[str], Any] | None = None,
    doc: str = "",
    *,
    default_factory: Callable[[], Any] | None = None,
    **declared: Any,
) -> Any:
    """A field of ``Settings`` carrying its ``Setting`` declaration."""
    assert parser is not None and doc, "a setting needs a parser and a line of doc"
    declaration = Setting(parser, doc, **declared)
    assert default_factory is None or declaration.default_doc, "a computed default needs default_doc"
    hidden = declaration.secret or declaration.mask is not None
    metadata = {"setting": declaration}
    if default_factory is not None:
        return field(default_factory=default_factory, repr=not hidden, metadata=metadata)
    return field(default=default, repr=not hidden, metadata=metadata)


def _cores() -> int:
    return os.cpu_count() or 1


def mask_url(url: str) -> str:
    """A URL without its password: postgresql://user:***@host/db."""
    parts = urllib.parse.urlsplit(url)
    prefix = f"{parts.scheme}://{parts.netloc}"
    if not url.startswith(prefix) or "@" in url[len(prefix) :]:
        # A password holding '/', '?' or '#' unescaped spills past the netloc: show nothing.
        return f"{parts.scheme}://{MASK}"
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostinfo}" if colon else f"{user}@{hostinfo}"
    query = "&".join(
        f"{k}={MASK}" if "pass" in k.lower() else f"{k}{sep}{v}"
        for k, sep, v in (item.partition("=") for item in parts.query.split("&") if item)
    )
    masked = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        masked += f"?{query}"
    if parts.fragment:
        masked += f"#{MASK}"
    return masked


def _mask_pairs(pairs: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return tuple(f"{client_id}:{MASK}" for client_id, _ in pairs)


def _unset_secret(settings: Settings) -> str:
    return "generated in embedded mode" if settings.embedded else ""


@dataclass(frozen=True)
class Settings:
    database_url: str | None = setting(
        None,
        parse.database_url,
        "`postgresql://user:password@host:5432/db`. Unset: the embedded PostgreSQL.",
        mask=mask_url,
        default_doc="unset: embedded",
        unset=lambda s: f"embedded PostgreSQL in {s.data_dir / 'pgdata'}",
    )
    migrate_database_url: str | None = setting(
        None,
        parse.database_url,
        "a direct connection (never through PgBouncer) for `authsvc migrate` and `serve`'s migrations on start,"
        " which hold a session-level lock",
        mask=mask_url,
        default_doc="`AUTHSVC_DATABASE_URL`",
        unset=lambda s: "AUTHSVC_DATABASE_URL's",
    )
    host: str = setting("127.0.0.1", parse.text, "the address `serve` listens on (`--host` overrides)")
    port: int = setting(8080, parse.whole(1, 65535), "the port `serve` listens on (`--port` overrides)")
    workers: int = setting(
        parser=parse.whole(1, 256),
        doc="worker processes sharing the port (`--workers` overrides)",
        default_factory=_cores,
        default_doc="number of cores",
    )
    data_dir: Path = setting(
        Path(".authsvc"), parse.path, "embedded database and secret files", default_doc="`./.authsvc`"
    )
    cors_origins: tuple[str, ...] = setting(
        (), parse.origins, "comma-separated origins allowed by CORS (`*` is refused)"
    )
    migrate_on_start: bool = setting(
        True, parse.boolean, "`serve` applies pending migrations; false: it refuses to start while any are pending"
    )
    db_pool_min: int = setting(
        2, parse.whole(1, 100), "asyncpg pool size per process: connections kept open (at most `AUTHSVC_DB_POOL_MAX`)"
    )
    db_pool_max: int = setting(10, parse.whole(1, 500), "asyncpg pool size per process: the most open at once")
    db_pgbouncer: bool = setting(
        False,
        parse.boolean,
        "`true`: `AUTHSVC_DATABASE_URL` is a PgBouncer in transaction mode (see [PgBouncer](operations.md#pgbouncer)):"
        " no startup parameter but `application_name`, the statement timeout is the role's and checked at start,"
        " no prepared-statement cache unless `AUTHSVC_DB_STATEMENT_CACHE_SIZE` says so",
    )
    db_statement_cache_size: int | None = setting(
        None,
        parse.whole(0, 10_000),
        "prepared statements asyncpg keeps per connection; `0` before PgBouncer 1.21 (each statement then costs"
        " two round trips), keep it with a PgBouncer 1.21+ whose `max_prepared_statements` is set",
        default_doc="`100`; `0` with `AUTHSVC_DB_PGBOUNCER=true`",
        unset=lambda s: str(s.statement_cache_size),
    )

    token_secret: str | None = setting(
        None,
        parse.secret,
        "HS256 signing key, at least 32 random characters",
        secret=True,
        default_doc="from the data dir (HS256 only)",
        unset=_unset_secret,
    )
    password_pepper: str | None = setting(
        None,
        parse.secret,
        "HMAC key applied before bcrypt, at least 32 random characters",
        secret=True,
        default_doc="from the data dir",
        unset=_unset_secret,
    )
    issuer: str = setting("authsvc", parse.text, "`iss` of the tokens, checked on every request")
    public_base_url: str | None = setting(
        None,
        parse.url,
        "where clients reach authsvc, for the URLs in the metadata document",
        default_doc="`http://<host>:<port>`",
        unset=lambda s: s.public_url,
    )
    audience: str = setting("authsvc", parse.text, "`aud` of the tokens, checked on every request")
    access_token_ttl: int = setting(900, parse.whole(60, 86_400), "access token lifetime, seconds")
    token_leeway: int = setting(10, parse.whole(0, 300), "clock skew allowed on `exp`/`iat`, seconds")
    password_grant: bool = setting(
        True,
        parse.boolean,
        "accept `grant_type=password` at `POST /auth/token` (false: 400 `unsupported_grant_type`; the refresh"
        " grant and `POST /auth` stay)",
    )
    token_algorithm: str = setting(
        "EdDSA",
        parse.algorithm,
        "`EdDSA` (Ed25519) or `ES256` keys from the key file; `HS256` signs with `AUTHSVC_TOKEN_SECRET`"
        " (single-service set-ups: nothing is published)",
    )
    signing_keys_file: Path | None = setting(
        None,
        parse.path,
        "the signing keys (see [Keys](operations.md#keys)); replicas re-read it within 10 s of a change",
        default_doc="`<data dir>/keys/signing-keys.json`",
        unset=lambda s: str(s.keys_file),
    )
    refresh_reuse_grace: int = setting(
        10,
        parse.whole(0, 300),
        "seconds a used refresh token may be presented again (two tabs at once) before reuse revokes the session",
    )
    session_idle_timeout: int = setting(
        7 * 86_400,
        parse.whole(300, 365 * 86_400),
        "a session not refreshed for this long ends",
        default_doc="`604800` (7 days)",
    )
    session_lifetime: int = setting(
        30 * 86_400,
        parse.whole(300, 3 * 365 * 86_400),
        "a session ends this long after its login, whatever happens",
        default_doc="`2592000` (30 days)",
    )
    scopes: tuple[str, ...] = setting(
        (),
        parse.scope_names,
        "scopes beyond authsvc's own (`profile todos admin introspect`), space-separated: what other services"
        " check (see [Scopes](scopes.md))",
        default_doc="none",
    )
    roles: tuple[tuple[str, tuple[str, ...]], ...] = setting(
        (("user", ("profile", "todos")), ("admin", ("profile", "todos", "admin"))),
        parse.roles,
        "the roles users hold and the scopes each grants: space-separated `role=scope,scope` items",
        default_doc="`user=profile,todos admin=profile,todos,admin`",
    )
    default_role: str = setting("user", parse.role_name, "the role a new signup gets")
    introspection_clients: tuple[tuple[str, str], ...] = setting(
        (),
        parse.clients,
        "comma-separated `client_id:secret` pairs allowed to call `/auth/introspect` (secrets of 32+ random"
        " characters)",
        mask=_mask_pairs,
        default_doc="none (endpoint off)",
    )

    bcrypt_rounds: int = setting(
        12, parse.whole(4, 31), "bcrypt cost; hashes are upgraded at the next login when it changes"
    )
    hash_workers: int = setting(
        parser=parse.whole(1, 256), doc="bcrypt threads", default_factory=_cores, default_doc="number of cores"
    )
    hash_queue: int = setting(
        64,
        parse.whole(1, 100_000),
        "checks allowed to wait for a thread (bcrypt's, and the password policy's own); past it 503 `busy` with"
        " `Retry-After`. Logins go ahead of new hashes (signups, password changes), which may use all bcrypt"
        " threads but one",
    )

    login_backoff_base_ms: int = setting(500, parse.whole(0, 60_000), "delay after the first failed login")
    login_backoff_max_ms: int = setting(30_000, parse.whole(0, 3_600_000), "cap of the doubling delay")
    login_failure_window: int = setting(
        900,
        parse.whole(1, 30 * 86_400),
        "seconds of quiet after which an (account, address) pair's failures are forgotten",
    )
    account_max_failures_per_hour: int = setting(
        100,
        parse.whole(1, 10_000),
        "failed logins one account may take in any hour, from all addresses together",
    )
    known_address_days: int = setting(
        30,
        parse.whole(0, 365),
        "an address the account logged in from within this many days is exempt from the account budget",
    )
    address_max_failures_per_minute: int = setting(
        30, parse.whole(1, 100_000), "failed logins one address may make in any minute, across all accounts"
    )
    address_block_seconds: int = setting(
        900, parse.whole(0, 86_400), "how long an address that went past that is refused"
    )
    signup_max_per_hour: int = setting(
        30,
        parse.whole(1, 100_000),
        "signups (`POST /users`, whatever their outcome) one address may make in any hour; past it 429 with"
        " `Retry-After`",
    )
    max_sleeping: int = setting(
        1000,
        parse.whole(0, 1_000_000),
        "requests that may wait out a backoff at once per process; past it the 401 is sent at once",
    )
    auth_events_days: int = setting(30, parse.whole(1, 3650), "days of login attempts kept in `auth_events`")
    trusted_proxies: tuple[IPNetwork, ...] = setting(
        (), parse.networks, "comma-separated CIDRs of reverse proxies whose `X-Forwarded-For` is believed"
    )
    idle_timeout: int = setting(
        15, parse.whole(1, 3600), "seconds after which an idle or half-sent connection is closed"
    )

    max_body_bytes: int = setting(16 * 1024, parse.whole(1024, 1024 * 1024), "largest request body (413 past it)")
    log_level: str = setting("INFO", parse.log_level, "`DEBUG`, `INFO`, `WARNING` or `ERROR`")

    # Stopping: in-flight requests get this long after SIGTERM before they are cancelled.
    shutdown_timeout: int = setting(
        10, parse.whole(1, 600), "seconds requests in flight get to finish after SIGTERM before they are cancelled"
    )
    # Operator tools: how soon `authsvc throttle reset` reaches running processes.
    throttle_memory_ms: int = setting(
        5000,
        parse.whole(0, 60_000),
        "longest a process repeats a login refusal (address block, backoff) from memory before asking the"
        " database again: how soon `authsvc throttle reset` reaches running processes; `0`: never from memory",
    )
    # Observability
    metrics_networks: tuple[IPNetwork, ...] = setting(
        PRIVATE_NETWORKS,
        parse.networks,
        "comma-separated CIDRs whose direct peers may read `/metrics` (others get 404); empty: nobody",
        default_doc="loopback and private ranges",
    )
    log_format: str = setting(
        "json", parse.log_format, "`json`: one JSON object per line; `text`: plain lines for a terminal"
    )
    access_log_successes: float = setting(
        1.0,
        parse.share,
        "share of successful requests (status below 400) that get an access line: 1 all, 0.01 one in a"
        " hundred, 0 none; refused and failed requests always get one",
    )
    # Database faults: asyncpg waits forever by default; every wait here is bounded.
    db_connect_timeout: float = setting(
        5.0, parse.seconds(0.1, 300), "seconds (decimals allowed) to open a database connection"
    )
    db_acquire_timeout: float = setting(
        5.0,
        parse.seconds(0.1, 300),
        "seconds a request waits for a pooled connection (opening one included) before it gets 503",
    )
    db_statement_timeout: float = setting(
        5.0,
        parse.seconds(0.1, 3600),
        "seconds one SQL statement may run (PostgreSQL `statement_timeout`); past it 503. Migrations are not"
        " bound by it",
    )
    # Passwords: an optional Pwned Passwords compatible range API (k-anonymity: only the
    # first 5 hex digits of the SHA-1 leave); unset, no breached-password check is made.
    breached_passwords_url: str | None = setting(
        None,
        parse.url,
        "a Pwned Passwords compatible range API, e.g. `https://api.pwnedpasswords.com`: new passwords it has"
        " seen are refused (see [New passwords](design.md#new-passwords))",
        mask=mask_url,  # a private mirror's URL may carry a credential
        default_doc="none (check off)",
        unset=lambda s: "no breached-password check",
    )
    breached_passwords_timeout: float = setting(
        2.0,
        parse.seconds(0.1, 30),
        "seconds (decimals allowed) that API gets to answer; past it the password is accepted unchecked",
    )

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def public_url(self) -> str:
        """Where clients reach this service (for the metadata document)."""
        return self.public_base_url or f"http://{self.host}:{self.port}"

    @property
    def migrate_url(self) -> str | None:
        """Where migrations connect: their own direct URL, else the service's."""
        return self.migrate_database_url or self.database_url

    @property
    def statement_cache_size(self) -> int:
        if self.db_statement_cache_size is not None:
            return self.db_statement_cache_size
        return 0 if self.db_pgbouncer else ASYNCPG_STATEMENT_CACHE

    @property
    def keys_file(self) -> Path:
        return self.signing_keys_file or self.data_dir / "keys" / "signing-keys.json"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


DECLARATIONS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in dataclasses.fields(Settings)}
FIELDS: dict[str, Callable[[str], Any]] = {name: decl.parse for name, decl in DECLARATIONS.items()}
# The settings whose whole value is a secret (the others never are, or are masked in part).
SECRETS: tuple[str, ...] = tuple(name for name, decl in DECLARATIONS.items() if decl.secret)


def env_name(name: str) -> str:
    return PREFIX + name.upper()


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; raise ConfigError naming the first bad variable."""
    environ = os.environ if environ is None else environ
    known = {env_name(name) for name in FIELDS}
    for var in environ:
        if var.startswith(PREFIX) and var not in known and not var.startswith("AUTHSVC_TEST_"):
            raise ConfigError(var, "unknown setting (typo?)")
    values: dict[str, Any] = {}
    for name, parser in FIELDS.items():
        var = env_name(name)
        if var in environ:
            try:
                values[name] = parser(environ[var])
            except ValueError as exc:
                raise ConfigError(var, str(exc)) from None
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Rules across settings."""
    if settings.db_pool_min > settings.db_pool_max:
        raise ConfigError(env_name("db_pool_min"), "must not exceed AUTHSVC_DB_POOL_MAX")
    if settings.login_backoff_base_ms > settings.login_backoff_max_ms:
        raise ConfigError(env_name("login_backoff_base_ms"), "must not exceed AUTHSVC_LOGIN_BACKOFF_MAX_MS")
    if settings.session_idle_timeout > settings.session_lifetime:
        raise ConfigError(env_name("session_idle_timeout"), "must not exceed AUTHSVC_SESSION_LIFETIME")
    if settings.migrate_database_url is not None and settings.database_url is None:
        raise ConfigError(
            env_name("migrate_database_url"), "set only with AUTHSVC_DATABASE_URL (the embedded database is direct)"
        )
    if settings.db_pgbouncer and settings.database_url is None:
        raise ConfigError(env_name("db_pgbouncer"), "needs AUTHSVC_DATABASE_URL (the PgBouncer's URL)")
    if settings.db_pgbouncer and settings.migrate_on_start and settings.migrate_database_url is None:
        raise ConfigError(
            env_name("migrate_database_url"),
            "must be set (the database itself, not PgBouncer) while AUTHSVC_DB_PGBOUNCER is true and"
            " AUTHSVC_MIGRATE_ON_START is true: migrations hold a session-level lock",
        )
    known = BUILTIN_SCOPES | set(settings.scopes)
    for role, granted in settings.roles:
        unknown = sorted(set(granted) - known)
        if unknown:
            raise ConfigError(
                env_name("roles"), f"role {role!r} grants {unknown[0]!r}, which is not a scope (add it to AUTHSVC_SCOPES)"
            )
    if settings.default_role not in dict(settings.roles):
        raise ConfigError(env_name("default_role"), f"{settings.default_role!r} is not one of AUTHSVC_ROLES")
    if settings.token_secret is not None and settings.token_secret == settings.password_pepper:
        raise ConfigError(env_name("password_pepper"), "must differ from AUTHSVC_TOKEN_SECRET")


def shown(settings: Settings, name: str) -> str:
    """A setting's value as `authsvc settings` prints it, secrets masked."""
    declared, value = DECLARATIONS[name], getattr(settings, name)
    if value is None:
        why = declared.unset(settings) if declared.unset else ""
        return f"(unset: {why})" if why else "(unset)"
    if declared.secret:
        return MASK
    if declared.mask is not None:
        value = declared.mask(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "(none)"
    return str(value)
