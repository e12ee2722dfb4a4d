from __future__ import annotations

from typing import Any

from aiohttp import web

from authsvc.appkeys import SETTINGS
from authsvc.auth.ids import parse_id
from authsvc.errors import NotFound
from authsvc.http.addresses import client_address as resolve
from authsvc.http.answers import json_response


def client_address(request: web.Request) -> str:
    """The address login budgets are kept for (see addresses.py)."""
    proxies = request.app[SETTINGS].trusted_proxies
    return resolve(request.remote, request.headers.getall("X-Forwarded-For", []), proxies)


# RFC 6749 5.1: token responses must not be cached.
TOKEN_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def tokens_response(body: dict[str, Any]) -> web.Response:
    return json_response(body, headers=TOKEN_HEADERS)


def path_id(request: web.Request, what: str) -> int:
    """The `{id}` of the path: malformed and out-of-range ids name nothing, 404 as for an id
    that does not exist (or is another user's)."""
    found = parse_id(request.match_info["id"])
    if found is None:
        raise NotFound(f"No such {what}.")
    return found
