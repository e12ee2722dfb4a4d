"""The parsers of the settings: each takes the variable's text and returns the value, or
raises ValueError with a short reason (the caller adds the variable's name)."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MIN_SECRET_CHARS = 32
MIN_SECRET_DISTINCT = 12


def whole(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise ValueError(f"must be a whole number from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be a whole number from {lo} to {hi}")
        return value

    return parse


def seconds(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"must be a number of seconds from {lo:g} to {hi:g}") from None
        if not lo <= value <= hi:  # also refuses nan and inf
            raise ValueError(f"must be a number of seconds from {lo:g} to {hi:g}")
        return value

    return parse


def share(raw: str) -> float:
    """A fraction from 0 to 1 (0.01: one in a hundred)."""
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("must be a share from 0 to 1 (0.01: one in a hundred)") from None
    if not 0 <= value <= 1:  # also refuses nan
        raise ValueError("must be a share from 0 to 1 (0.01: one in a hundred)")
    return value


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def path(raw: str) -> Path:
    return Path(text(raw))


def database_url(raw: str) -> str | None:
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


def origins(raw: str) -> tuple[str, ...]:
    found = []
    for item in raw.split(","):
        item = item.strip().rstrip("/")
        if not item:
            continue
        parts = urllib.parse.urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError(f"{item!r} is not an origin like https://app.example.com (and '*' is not allowed)")
        found.append(item)
    return tuple(found)


def networks(raw: str) -> tuple[IPNetwork, ...]:
    found = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            found.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or CIDR network like 10.0.0.0/8") from None
    return tuple(found)


def url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value


def secret(raw: str) -> str:
    value = raw.strip()
    check_secret(value)
    return value


def check_secret(value: str) -> None:
    if len(value) < MIN_SECRET_CHARS or len(set(value)) < MIN_SECRET_DISTINCT:
        raise ValueError(
            f"too short or too simple: use at least {MIN_SECRET_CHARS} random characters, e.g. the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )


def algorithm(raw: str) -> str:
    value = raw.strip()
    if value not in ("EdDSA", "ES256", "HS256"):
        raise ValueError("must be EdDSA, ES256 or HS256")
    return value


def clients(raw: str) -> tuple[tuple[str, str], ...]:
    found = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        client_id, sep, client_secret = item.partition(":")
        if not sep or not client_id or not client_id.isprintable():
            raise ValueError("must be a comma-separated list of client_id:secret pairs")
        try:
            check_secret(client_secret)
        except ValueError as exc:
            raise ValueError(f"the secret of {client_id!r} is {exc}") from None
        found.append((client_id, client_secret))
    return tuple(found)


# RFC 6749 3.3: a scope-token is printable ASCII but space, '"' and '\\'.
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,64}")


def scope_names(raw: str) -> tuple[str, ...]:
    names = raw.replace(",", " ").split()
    bad = [name for name in names if not SCOPE_TOKEN.fullmatch(name)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a scope name (RFC 6749 3.3 characters, at most 64)")
    return tuple(dict.fromkeys(names))


def roles(raw: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`name=scope,scope name=scope`: each role and the scopes it grants."""
    found: dict[str, tuple[str, ...]] = {}
    for item in raw.split():
        name, sep, scopes = item.partition("=")
        if not sep or not SCOPE_TOKEN.fullmatch(name):
            raise ValueError("must be space-separated `role=scope,scope` items")
        if name in found:
            raise ValueError(f"role {name!r} is given twice")
        found[name] = scope_names(scopes)
    if not found:
        raise ValueError("must name at least one role")
    return tuple(found.items())


def role_name(raw: str) -> str:
    value = raw.strip()
    if not SCOPE_TOKEN.fullmatch(value):
        raise ValueError("must be a role name")
    return value


def log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return value


def log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("json", "text"):
        raise ValueError("must be json or text")
    return value
