"""Secrets kept as files in the data dir, for set-ups that do not pass them in the environment.

Order: the AUTHSVC_* variable, then <data_dir>/secrets/<name>, then (embedded mode, or
`authsvc secrets init`) a new random value written there once with mode 0600.
The values are never logged or printed.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from authsvc.auth.keyring import KeyFile, KeyFileError
from authsvc.settings import SECRETS, ConfigError, Settings, check_secret, env_name

# The settings declared secret=True: each may live in a file here.
SECRET_NAMES = SECRETS


def secret_path(data_dir: Path, name: str) -> Path:
    return data_dir / "secrets" / name


def _read(path: Path, name: str) -> str:
    value = path.read_text(encoding="utf-8").strip()
    try:
        check_secret(value)
    except ValueError as exc:
        raise ConfigError(env_name(name), f"{path}: {exc}") from None
    return value


def _generate(path: Path) -> str:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    # O_EXCL: two processes starting at once cannot both write; the loser reads the winner's.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")
    return value


def _needed(settings: Settings) -> tuple[str, ...]:
    # The token secret signs only in HS256 mode; asymmetric keys live in the key file.
    return SECRET_NAMES if settings.token_algorithm == "HS256" else ("password_pepper",)


def ensure_keys(settings: Settings, *, generate: bool) -> None:
    """Make sure the signing key file exists (asymmetric modes), creating it when allowed."""
    if settings.token_algorithm == "HS256":
        return
    path = settings.keys_file
    doc = KeyFile.load(path)
    if doc.entries:
        return
    if not generate:
        raise ConfigError(env_name("signing_keys_file"), f"no signing keys at {path}: run `authsvc keys generate`")
    doc.generate(settings.token_algorithm, activate=True)
    doc.save()


def resolve(settings: Settings, *, generate: bool | None = None) -> Settings:
    """Fill in missing secrets and keys; generate them only when allowed (default: embedded mode)."""
    generate = settings.embedded if generate is None else generate
    try:
        ensure_keys(settings, generate=generate)
    except KeyFileError as exc:
        raise ConfigError(env_name("signing_keys_file"), str(exc)) from None
    return _fill(settings, _needed(settings), generate)


def resolve_pepper(settings: Settings, *, generate: bool | None = None) -> Settings:
    """Only the password pepper: what `authsvc users create` needs to hash as `serve` does."""
    generate = settings.embedded if generate is None else generate
    return _fill(settings, ("password_pepper",), generate)


def _fill(settings: Settings, names: tuple[str, ...], generate: bool) -> Settings:
    found = {}
    for name in names:
        if getattr(settings, name) is not None:
            continue
        path = secret_path(settings.data_dir, name)
        if path.exists():
            found[name] = _read(path, name)
        elif generate:
            found[name] = _generate(path)
        else:
            raise ConfigError(env_name(name), f"not set (set it, or run `authsvc secrets init` to create {path})")
    return settings.replace(**found) if found else settings
