"""Scopes a route needs: a handler decorator, and rules by path prefix for the middleware."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from authsvc.verifier import answers
from authsvc.verifier.requestkeys import SCOPES

# RFC 6749 section 3.3: scope = scope-token *( SP scope-token ).
SCOPE_TOKEN = r"[\x21\x23-\x5b\x5d-\x7e]+"
_SCOPE = re.compile(rf"{SCOPE_TOKEN}(?: {SCOPE_TOKEN})*")

H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])


def parse_scope(value: Any) -> frozenset[str] | None:
    """The scopes of a `scope` claim or introspection field; None when it is not one."""
    if not isinstance(value, str):
        return None
    if value == "":
        return frozenset()
    return frozenset(value.split(" ")) if _SCOPE.fullmatch(value) else None


def _checked_names(scopes: Iterable[str]) -> frozenset[str]:
    names = frozenset(scopes)
    bad = sorted(name for name in names if not isinstance(name, str) or not re.fullmatch(SCOPE_TOKEN, name))
    if bad or not names:
        # At import time, in the service's own code: a typo must not become "needs nothing".
        raise ValueError(f"not scope names (RFC 6749 3.3): {bad or 'none given'}")
    return names


def require_scopes(*scopes: str) -> Callable[[H], H]:
    """A handler (function or web.View method) that runs only for tokens holding every scope.

    The verifier's middleware must run first; a request it let through without a token (a
    public path) gets 401 here, never the handler.
    """
    needed = _checked_names(scopes)

    def decorate(handler: H) -> H:
        @functools.wraps(handler)
        async def checked(first: Any, *args: Any, **kwargs: Any) -> web.StreamResponse:
            request = first.request if isinstance(first, web.View) else first
            granted = request.get(SCOPES)
            if granted is None:
                return answers.unauthorized("unauthorized")
            if not needed <= granted:
                return answers.insufficient_scope(needed)
            return await handler(first, *args, **kwargs)

        checked.authsvc_required_scopes = needed  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return decorate


class ScopeRules:
    """`{"/orders": ("orders:read",)}`: what each path prefix needs.

    A prefix covers itself and what lies below it at a segment boundary ("/orders" covers
    "/orders/7", not "/ordersx"). Every rule that covers a request applies: a narrower prefix
    adds scopes, it never lifts a wider one's. The prefix is matched against the request's
    path and the matched route's pattern, so a route reached by an odd spelling is still covered.
    """

    def __init__(self, rules: Mapping[str, Iterable[str]]) -> None:
        self._rules: list[tuple[str, frozenset[str]]] = []
        for prefix, scopes in rules.items():
            if not prefix.startswith("/"):
                raise ValueError(f"a path prefix starts with '/': {prefix!r}")
            self._rules.append((prefix.rstrip("/"), _checked_names(scopes)))

    def __bool__(self) -> bool:
        return bool(self._rules)

    def needed(self, request: web.Request) -> frozenset[str]:
        paths = [request.path]
        resource = request.match_info.route.resource
        if resource is not None:
            paths.append(resource.canonical)
        needed: set[str] = set()
        for prefix, scopes in self._rules:
            if any(_covers(prefix, path) for path in paths):
                needed |= scopes
        return frozenset(needed)


def _covers(prefix: str, path: str) -> bool:
    return prefix == "" or path == prefix or path.startswith(prefix + "/")
