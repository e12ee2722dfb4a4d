"""OAuth2 clients, their secrets and the assertions they used."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from authsvc.db.repo import delete_in_batches

COLUMNS = "id, name, scopes, auth_method, jwks, jwks_uri, token_ttl, created_at, updated_at, disabled_at"


@dataclass(frozen=True)
class Client:
    id: str
    name: str
    scopes: list[str]
    auth_method: str  # "client_secret" or "private_key_jwt"
    jwks: dict[str, Any] | None
    jwks_uri: str | None
    token_ttl: int
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None


def _client(row: asyncpg.Record | None) -> Client | None:
    if row is None:
        return None
    data = dict(row)
    if isinstance(data["jwks"], str):  # jsonb arrives as text without a codec
        data["jwks"] = json.loads(data["jwks"])
    return Client(**data)


async def insert(
    conn: asyncpg.Connection,
    client_id: str,
    name: str,
    scopes: list[str],
    auth_method: str,
    jwks: dict[str, Any] | None,
    jwks_uri: str | None,
    token_ttl: int,
) -> Client | None:
    """A new client; None when its name is taken."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO clients (id, name, scopes, auth_method, jwks, jwks_uri, token_ttl)
        VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)
        ON CONFLICT (name) DO NOTHING
        RETURNING {COLUMNS}
        """,
        client_id,
        name,
        scopes,
        auth_method,
        json.dumps(jwks) if jwks is not None else None,
        jwks_uri,
        token_ttl,
    )
    return _client(row)


async def select(conn: asyncpg.Connection, client_id: str) -> Client | None:
    return _client(await conn.fetchrow(f"SELECT {COLUMNS} FROM clients WHERE id = $1", client_id))


async def select_all(conn: asyncpg.Connection) -> list[Client]:
    rows = await conn.fetch(f"SELECT {COLUMNS} FROM clients ORDER BY created_at, id")
    return [c for c in map(_client, rows) if c is not None]


async def select_with_secrets(conn: asyncpg.Connection, client_id: str) -> tuple[Client, list[bytes]] | None:
    """A client and the digests of its secrets not retired, in one round trip."""
    row = await conn.fetchrow(
        f"""
        SELECT {COLUMNS},
               ARRAY(SELECT secret_hash FROM client_secrets s
                     WHERE s.client_id = c.id AND s.retired_at IS NULL) AS secret_hashes
        FROM clients c WHERE id = $1
        """,
        client_id,
    )
    if row is None:
        return None
    data = dict(row)
    hashes = data.pop("secret_hashes")
    client = _client(data)  # type: ignore[arg-type]
    assert client is not None
    return client, list(hashes)


async def select_live_scopes(conn: asyncpg.Connection, client_id: str) -> list[str] | None:
    """The allowed scopes of an enabled client, None when it is disabled or does not exist."""
    return await conn.fetchval("SELECT scopes FROM clients WHERE id = $1 AND disabled_at IS NULL", client_id)


async def insert_secret(conn: asyncpg.Connection, client_id: str, secret_hash: bytes) -> None:
    await conn.execute("INSERT INTO client_secrets (client_id, secret_hash) VALUES ($1, $2)", client_id, secret_hash)


async def retire_older_secrets(conn: asyncpg.Connection, client_id: str) -> int:
    """Retire every live secret of the client but the newest; how many were retired."""
    status = await conn.execute(
        """
        UPDATE client_secrets SET retired_at = now()
        WHERE client_id = $1 AND retired_at IS NULL
          AND id <> (SELECT max(id) FROM client_secrets WHERE client_id = $1 AND retired_at IS NULL)
        """,
        client_id,
    )
    return int(status.split()[-1])


async def set_disabled(conn: asyncpg.Connection, client_id: str, disabled: bool) -> Client | None:
    """Disable (keeping the first time) or enable; None for an unknown client."""
    row = await conn.fetchrow(
        f"""
        UPDATE clients
        SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now()) END, updated_at = now()
        WHERE id = $1
        RETURNING {COLUMNS}
        """,
        client_id,
        disabled,
    )
    return _client(row)


async def delete(conn: asyncpg.Connection, client_id: str) -> bool:
    return await conn.execute("DELETE FROM clients WHERE id = $1", client_id) == "DELETE 1"


async def insert_assertion(conn: asyncpg.Connection, client_id: str, jti: str, expires_at: datetime) -> bool:
    """Record a private_key_jwt assertion's jti; False when it was seen already (a replay)."""
    status = await conn.execute(
        "INSERT INTO client_assertions (client_id, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        client_id,
        jti,
        expires_at,
    )
    return status == "INSERT 0 1"


async def prune_assertions(conn: asyncpg.Connection) -> int:
    """Assertions past their expiry: a replay of one is refused for its exp anyway."""
    return await delete_in_batches(
        conn,
        """
        DELETE FROM client_assertions WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM client_assertions WHERE expires_at < now() ORDER BY expires_at LIMIT $1))
        """,
    )
