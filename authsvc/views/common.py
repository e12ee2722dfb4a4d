from __future__ import annotations

from aiohttp import web

from ..addresses import client_address as resolve
from ..keys import SETTINGS


def client_address(request: web.Request) -> str:
    """The address login budgets are kept for (see addresses.py)."""
    proxies = request.app[SETTINGS].trusted_proxies
    return resolve(request.remote, request.headers.getall("X-Forwarded-For", []), proxies)
