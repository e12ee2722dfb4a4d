"""Database ids as they arrive from clients (paths, token subjects)."""

from __future__ import annotations

MAX_ID = 2**63 - 1  # PostgreSQL bigint


def parse_id(raw: str) -> int | None:
    """A positive bigint written in ASCII digits, or None."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        return None
    value = int(raw)
    return value if 0 < value <= MAX_ID else None
