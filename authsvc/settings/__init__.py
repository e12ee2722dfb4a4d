"""Settings: read once from AUTHSVC_* variables, validated, frozen.

Every setting is declared once in ``FIELDS``; docs/settings.md's table and the
docker-compose check in the tests are read against this list.
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

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PREFIX = "AUTHSVC_"
MIN_SECRET_CHARS = 32
MIN_SECRET_DISTINCT = 12
# Who may read /metrics by default: this host and private networks, never the internet.
PRIVATE_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(net)
    for net in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


class ConfigError(Exception):
    """A setting has a bad value; the message names the variable."""

    def __init__(self, var: str, problem: str) -> None:
        super().__init__(f"{var}: {problem}")
        self.var = var


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    data_dir: Path = Path(".authsvc")
    cors_origins: tuple[str, ...] = ()
    migrate_on_start: bool = True
    db_pool_min: int = 2
    db_pool_max: int = 10

    token_secret: str | None = field(default=None, repr=False)
    password_pepper: str | None = field(default=None, repr=False)
    issuer: str = "authsvc"
    public_base_url: str | None = None
    audience: str = "authsvc"
    access_token_ttl: int = 900
    token_leeway: int = 10
    password_grant: bool = True
    token_algorithm: str = "EdDSA"
    signing_keys_file: Path | None = None
    refresh_reuse_grace: int = 10
    session_idle_timeout: int = 7 * 86_400
    session_lifetime: int = 30 * 86_400
    introspection_clients: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    bcrypt_rounds: int = 12
    hash_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    hash_queue: int = 64

    login_backoff_base_ms: int = 500
    login_backoff_max_ms: int = 30_000
    login_failure_window: int = 900
    account_max_failures_per_hour: int = 100
    known_address_days: int = 30
    address_max_failures_per_minute: int = 30
    address_block_seconds: int = 900
    signup_max_per_hour: int = 30
    max_sleeping: int = 1000
    auth_events_days: int = 30
    trusted_proxies: tuple[IPNetwork, ...] = ()
    idle_timeout: int = 15

    max_body_bytes: int = 16 * 1024
    log_level: str = "INFO"

    # Stopping: in-flight requests get this long after SIGTERM before they are cancelled.
    shutdown_timeout: int = 10
    # Operator tools: how soon `authsvc throttle reset` reaches running processes.
    throttle_memory_ms: int = 5000
    # Observability
    metrics_networks: tuple[IPNetwork, ...] = PRIVATE_NETWORKS
    log_format: str = "json"
    # Database faults: asyncpg waits forever by default; every wait here is bounded.
    db_connect_timeout: float = 5.0
    db_acquire_timeout: float = 5.0
    db_statement_timeout: float = 5.0
    # Passwords: an optional Pwned Passwords compatible range API (k-anonymity: only the
    # first 5 hex digits of the SHA-1 leave); unset, no breached-password check is made.
    breached_passwords_url: str | None = None
    breached_passwords_timeout: float = 2.0

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def public_url(self) -> str:
        """Where clients reach this service (for the metadata document)."""
        return self.public_base_url or f"http://{self.host}:{self.port}"

    @property
    def keys_file(self) -> Path:
        return self.signing_keys_file or self.data_dir / "keys" / "signing-keys.json"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# --- parsers: each returns the value or raises ValueError with a short reason ---


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise ValueError(f"must be a whole number from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be a whole number from {lo} to {hi}")
        return value

    return parse


def _seconds(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"must be a number of seconds from {lo:g} to {hi:g}") from None
        if not lo <= value <= hi:  # also refuses nan and inf
            raise ValueError(f"must be a number of seconds from {lo:g} to {hi:g}")
        return value

    return parse


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _database_url(raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError("must be a postgresql:// URL")
    # Checked here so that a typo stops the start in one line, not in a traceback from the
    # driver; the message never repeats the URL (it may hold a password).
    for host in parts.netloc.rpartition("@")[2].split(","):  # host[:port], one or several
        port = host.rpartition("]")[2] if host.startswith("[") else host  # [IPv6]:port
        if ":" in port:
            number = port.rpartition(":")[2]
            if number and not (number.isascii() and number.isdigit() and 1 <= int(number) <= 65535):
                raise ValueError("has a port that is not a whole number from 1 to 65535")
    return value


def _origins(raw: str) -> tuple[str, ...]:
    origins = []
    for item in raw.split(","):
        item = item.strip().rstrip("/")
        if not item:
            continue
        parts = urllib.parse.urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError(f"{item!r} is not an origin like https://app.example.com (and '*' is not allowed)")
        origins.append(item)
    return tuple(origins)


def _networks(raw: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or CIDR network like 10.0.0.0/8") from None
    return tuple(networks)


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value


def _secret(raw: str) -> str:
    value = raw.strip()
    check_secret(value)
    return value


def check_secret(value: str) -> None:
    if len(value) < MIN_SECRET_CHARS or len(set(value)) < MIN_SECRET_DISTINCT:
        raise ValueError(
            f"too short or too simple: use at least {MIN_SECRET_CHARS} random characters, e.g. the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )


def _algorithm(raw: str) -> str:
    value = raw.strip()
    if value not in ("EdDSA", "ES256", "HS256"):
        raise ValueError("must be EdDSA, ES256 or HS256")
    return value


def _clients(raw: str) -> tuple[tuple[str, str], ...]:
    clients = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        client_id, sep, secret = item.partition(":")
        if not sep or not client_id or not client_id.isprintable():
            raise ValueError("must be a comma-separated list of client_id:secret pairs")
        try:
            check_secret(secret)
        except ValueError as exc:
            raise ValueError(f"the secret of {client_id!r} is {exc}") from None
        clients.append((client_id, secret))
    return tuple(clients)


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return value


def _log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("json", "text"):
        raise ValueError("must be json or text")
    return value


FIELDS: dict[str, Callable[[str], Any]] = {
    "database_url": _database_url,
    "host": _text,
    "port": _int(1, 65535),
    "workers": _int(1, 256),
    "data_dir": lambda raw: Path(_text(raw)),
    "cors_origins": _origins,
    "migrate_on_start": _bool,
    "db_pool_min": _int(1, 100),
    "db_pool_max": _int(1, 500),
    "token_secret": _secret,
    "password_pepper": _secret,
    "issuer": _text,
    "public_base_url": _url,
    "audience": _text,
    "access_token_ttl": _int(60, 86_400),
    "token_leeway": _int(0, 300),
    "password_grant": _bool,
    "token_algorithm": _algorithm,
    "signing_keys_file": lambda raw: Path(_text(raw)),
    "refresh_reuse_grace": _int(0, 300),
    "session_idle_timeout": _int(300, 365 * 86_400),
    "session_lifetime": _int(300, 3 * 365 * 86_400),
    "introspection_clients": _clients,
    "bcrypt_rounds": _int(4, 31),
    "hash_workers": _int(1, 256),
    "hash_queue": _int(1, 100_000),
    "login_backoff_base_ms": _int(0, 60_000),
    "login_backoff_max_ms": _int(0, 3_600_000),
    "login_failure_window": _int(1, 30 * 86_400),
    "account_max_failures_per_hour": _int(1, 10_000),
    "known_address_days": _int(0, 365),
    "address_max_failures_per_minute": _int(1, 100_000),
    "address_block_seconds": _int(0, 86_400),
    "signup_max_per_hour": _int(1, 100_000),
    "max_sleeping": _int(0, 1_000_000),
    "auth_events_days": _int(1, 3650),
    "trusted_proxies": _networks,
    "idle_timeout": _int(1, 3600),
    "max_body_bytes": _int(1024, 1024 * 1024),
    "log_level": _log_level,
    "shutdown_timeout": _int(1, 600),
    "throttle_memory_ms": _int(0, 60_000),
    # Observability
    "metrics_networks": _networks,
    "log_format": _log_format,
    "db_connect_timeout": _seconds(0.1, 300),
    "db_acquire_timeout": _seconds(0.1, 300),
    "db_statement_timeout": _seconds(0.1, 3600),
    # Passwords
    "breached_passwords_url": _url,
    "breached_passwords_timeout": _seconds(0.1, 30),
}


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
    for name, parse in FIELDS.items():
        var = env_name(name)
        if var in environ:
            try:
                values[name] = parse(environ[var])
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
    if settings.token_secret is not None and settings.token_secret == settings.password_pepper:
        raise ConfigError(env_name("password_pepper"), "must differ from AUTHSVC_TOKEN_SECRET")
