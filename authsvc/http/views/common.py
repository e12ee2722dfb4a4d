from __future__ import annotations

from aiohttp import web

from authsvc.appkeys import SETTINGS
from authsvc.http.addresses import client_address as resolve


def client_address(request: web.Request) -> str:
    """The address login budgets are kept for (see addresses.py)."""
    proxies = request.app[SETTINGS].trusted_proxies
    return resolve(request.remote, request.headers.getall("X-Forwarded-For", []), proxies)
