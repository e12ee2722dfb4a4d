"""Signing keys: one active key signs, retired keys stay published until their last token expires.

Keys live in one JSON file (AUTHSVC_SIGNING_KEYS_FILE, default <data dir>/keys/signing-keys.json,
mode 0600) that every replica reads; `authsvc keys rotate` writes a new active key into it and
replicas pick the change up within RELOAD_EVERY seconds. Each key has exactly one algorithm;
verification takes the algorithm from our key, never from the token.

With AUTHSVC_TOKEN_ALGORITHM=HS256 the single key is AUTHSVC_TOKEN_SECRET and nothing is
published: a symmetric key verifies only inside authsvc.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

ASYMMETRIC = ("EdDSA", "ES256")
ALGORITHMS = (*ASYMMETRIC, "HS256")
RELOAD_EVERY = 10.0


class KeyFileError(Exception):
    """The key file is missing or unusable; the message says how to fix it."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    created_at: datetime
    retired_at: datetime | None
    private: Any  # a cryptography private key, or the HS256 secret as bytes

    @property
    def public(self) -> Any:
        return self.private if self.alg == "HS256" else self.private.public_key()

    def jwk(self) -> dict[str, Any]:
        """The public JWK (RFC 7517/8037); never the private part."""
        if self.alg == "HS256":
            raise ValueError("a symmetric key is never published")
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[self.alg].to_jwk(self.public))
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk


def _new_private(alg: str) -> Any:
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"cannot generate a key for {alg}")


def _pem(private: Any) -> str:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def _new_kid() -> str:
    return datetime.now(UTC).strftime("%Y%m%d") + "-" + secrets.token_hex(4)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# --- the key file ---


@dataclass
class KeyFile:
    """The JSON document on disk: {"active": kid, "keys": [{kid, alg, created_at, retired_at, private_key}]}."""

    path: Path
    active: str | None
    entries: list[dict[str, Any]]

    @classmethod
    def load(cls, path: Path) -> KeyFile:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return cls(path, doc.get("active"), list(doc.get("keys", [])))
        except FileNotFoundError:
            return cls(path, None, [])
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"{path}: not a readable key file ({exc})") from None

    def save(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        doc = json.dumps({"active": self.active, "keys": self.entries}, indent=2) + "\n"
        # Written beside the target and renamed over it: a reader sees the old file or the new one.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(doc)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise

    def generate(self, alg: str, *, activate: bool) -> str:
        kid = _new_kid()
        self.entries.append(
            {
                "kid": kid,
                "alg": alg,
                "created_at": _iso(datetime.now(UTC)),
                "retired_at": None,
                "private_key": _pem(_new_private(alg)),
            }
        )
        if activate or self.active is None:
            self.activate(kid)
        return kid

    def activate(self, kid: str) -> None:
        if not any(e["kid"] == kid for e in self.entries):
            raise KeyFileError(f"no key {kid} in {self.path}")
        now = _iso(datetime.now(UTC))
        for entry in self.entries:
            if entry["kid"] == self.active and kid != self.active:
                entry["retired_at"] = now
            if entry["kid"] == kid:
                entry["retired_at"] = None
        self.active = kid

    def prune(self, keep_for: timedelta) -> list[str]:
        """Drop retired keys whose tokens have all expired; return their kids."""
        cutoff = datetime.now(UTC) - keep_for
        gone = [
            e["kid"]
            for e in self.entries
            if e["kid"] != self.active and e["retired_at"] and _parse_time(e["retired_at"]) < cutoff
        ]
        self.entries = [e for e in self.entries if e["kid"] not in gone]
        return gone


def _key_from_entry(entry: dict[str, Any]) -> SigningKey:
    alg = entry.get("alg")
    if alg not in ASYMMETRIC:
        raise KeyFileError(f"key {entry.get('kid')}: algorithm {alg!r} is not one of {', '.join(ASYMMETRIC)}")
    private = serialization.load_pem_private_key(entry["private_key"].encode("ascii"), password=None)
    expected = ed25519.Ed25519PrivateKey if alg == "EdDSA" else ec.EllipticCurvePrivateKey
    if not isinstance(private, expected):
        raise KeyFileError(f"key {entry['kid']}: the key does not match its algorithm {alg}")
    return SigningKey(
        entry["kid"], alg, _parse_time(entry["created_at"]), _parse_time(entry.get("retired_at")), private
    )


def hs256_key(secret: str) -> SigningKey:
    kid = "hs256-" + base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()[:6]).decode().rstrip("=")
    return SigningKey(kid, "HS256", datetime.now(UTC), None, secret.encode("utf-8"))


# --- the keys in use ---


class KeyRing:
    """The active signing key and every key still trusted for verification."""

    def __init__(self, active: SigningKey, trusted: dict[str, SigningKey], keep_retired: timedelta) -> None:
        self.active = active
        self._trusted = trusted
        self._keep_retired = keep_retired
        self._path: Path | None = None
        self._mtime: float | None = None

    @classmethod
    def symmetric(cls, secret: str) -> KeyRing:
        key = hs256_key(secret)
        return cls(key, {key.kid: key}, timedelta(0))

    @classmethod
    def from_file(cls, path: Path, keep_retired: timedelta) -> KeyRing:
        ring = cls._read(path, keep_retired)
        ring._path = path
        ring._mtime = path.stat().st_mtime
        return ring

    @classmethod
    def _read(cls, path: Path, keep_retired: timedelta) -> KeyRing:
        doc = KeyFile.load(path)
        if not doc.entries:
            raise KeyFileError(f"no signing keys in {path}: run `authsvc keys generate`")
        keys = {k.kid: k for k in map(_key_from_entry, doc.entries)}
        if doc.active not in keys:
            raise KeyFileError(f"{path}: the active key {doc.active!r} is not in the file")
        return cls(keys[doc.active], keys, keep_retired)

    def key_for(self, kid: Any) -> SigningKey | None:
        """A key that may verify a token: the active one, or a retired one whose tokens may live."""
        key = self._trusted.get(kid) if isinstance(kid, str) else None
        if key is None:
            return None
        if key.retired_at is not None and key.retired_at + self._keep_retired < datetime.now(UTC):
            return None
        return key

    def published(self) -> list[SigningKey]:
        if self.active.alg == "HS256":
            return []
        return [k for k in self._trusted.values() if self.key_for(k.kid) is not None]

    async def reload_if_changed(self) -> bool:
        """Re-read the key file when it changed on disk; keep the current keys if it is broken."""
        if self._path is None:
            return False
        mtime = (await asyncio.to_thread(self._path.stat)).st_mtime
        if mtime == self._mtime:
            return False
        fresh = await asyncio.to_thread(self._read, self._path, self._keep_retired)
        self.active, self._trusted, self._mtime = fresh.active, fresh._trusted, mtime
        return True
