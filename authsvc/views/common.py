from __future__ import annotations

from aiohttp import web


def client_address(request: web.Request) -> str:
    """The address login budgets are kept for: the peer of this connection."""
    return request.remote or "unknown"
