"""The shipped verifier's scopes, subject kinds and API keys, in a second service in front of authsvc.

TEMPORARY, until issue 14's foundation lands: authsvc's tokens carry no `scope` yet and it issues
no client tokens or API keys. `scoped` (a real login token re-signed with a `scope` added) and
`client_token` (claims minted with authsvc's own active key) stand in for the real grants, and
`IntrospectionStub` for authsvc's answer about an active API key. Where authsvc can answer today
(JWKS, a login, introspection of an unknown `ak_` key) the real one is asked.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from helpers import assert_error, bearer, login, signup

from authsvc.appkeys import TOKENS
from authsvc.auth import jwtcheck
from authsvc.settings import Settings
from authsvc.verifier import (
    CLAIMS,
    CLIENT_ID,
    SCOPES,
    SUBJECT_KIND,
    Introspection,
    TokenVerifier,
    require_scopes,
)
from authsvc.verifier.scopes import ScopeRules

OWNER = "owner@example.com"
SERVICE_ID = "orders"
SERVICE_SECRET = secrets.token_urlsafe(48)
RULES = {"/orders": ("orders:read",), "/orders/admin": ("orders:admin",)}


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    # The verifier's credential for asking authsvc about API keys.
    return base_settings.replace(introspection_clients=((SERVICE_ID, SERVICE_SECRET),))


def api_key() -> str:
    """An API key of the shape spec14 gives: ak_ + 8-char id part + _ + 256 random bits."""
    return f"ak_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


# --- stand-ins for grants authsvc does not have yet (replace with real ones after the foundation) ---


def sign(app: web.Application, claims: dict[str, Any]) -> str:
    key = app[TOKENS].keys.active
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"typ": jwtcheck.TOKEN_TYPE, "kid": key.kid})


def scoped(app: web.Application, token: str, scope: Any) -> str:
    """REPLACE with a login asking for `scope` once tokens carry it: the real token plus a scope."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return sign(app, {**claims, "scope": scope})


def client_token(app: web.Application, settings: Settings, client_id: str, scope: Any, **extra: Any) -> str:
    """REPLACE with POST /auth/token grant_type=client_credentials once it exists (spec14 claims)."""
    now = int(time.time())
    claims = {
        "iss": settings.issuer,
        "sub": client_id,
        "aud": settings.audience,
        "iat": now,
        "exp": now + 300,
        "jti": secrets.token_urlsafe(16),
        "client_id": client_id,
        "scope": scope,
        **extra,
    }
    return sign(app, {name: value for name, value in claims.items() if value is not None})


@dataclass
class IntrospectionStub:
    """REPLACE with real authsvc once it answers for API keys: RFC 7662 as spec14 describes it."""

    answers: dict[str, Any] = field(default_factory=dict)  # token -> body, or an int status
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (authorization, content type, token)

    async def introspect(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form["token"])
        self.seen.append((request.headers.get("Authorization", ""), request.content_type, token))
        answer = self.answers.get(token, {"active": False})
        if isinstance(answer, int):
            return web.json_response({"error": "server_error"}, status=answer)
        if isinstance(answer, str):
            return web.Response(text=answer, content_type="application/json")
        return web.json_response(answer)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the second service ---


class Report(web.View):
    @require_scopes("reports")
    async def get(self) -> web.Response:
        return web.json_response({"report": True})


def make_service(verifier: TokenVerifier) -> web.Application:
    app = web.Application(middlewares=[verifier.middleware])
    app.cleanup_ctx.append(verifier.ctx)

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "kind": request[SUBJECT_KIND],
                "scopes": sorted(request[SCOPES]),
                "client_id": request[CLIENT_ID],
                "sub": request[CLAIMS]["sub"],
            }
        )

    @require_scopes("reports", "orders:read")
    async def reports(request: web.Request) -> web.Response:
        return await whoami(request)

    @require_scopes("health")
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    for path in ("/whoami", "/orders", "/orders/{id}", "/orders/admin/x", "/orders-archive"):
        app.router.add_get(path, whoami)
    app.router.add_get("/reports", reports)
    app.router.add_view("/report", Report)
    app.router.add_get("/healthz", health)
    return app


@dataclass
class World:
    authsvc: TestClient
    service: TestClient
    verifier: TokenVerifier
    token: str  # a real login token (scope "profile todos")
    settings: Settings
    clock: Clock

    def scoped(self, scope: Any) -> str:
        return scoped(self.authsvc.app, self.token, scope)

    def unscoped(self) -> str:
        """The login token as authsvc made it before tokens carried a scope."""
        claims = jwt.decode(self.token, options={"verify_signature": False})
        return sign(self.authsvc.app, {name: value for name, value in claims.items() if name != "scope"})

    def client_token(self, client_id: str = "cl_0123456789abcdef", scope: Any = "orders:read", **extra: Any) -> str:
        return client_token(self.authsvc.app, self.settings, client_id, scope, **extra)


@pytest.fixture
def start(client: TestClient, aiohttp_client: Any, settings: Settings):
    """The service; `ask` is "authsvc" (its real RFC 7662 endpoint) or a stub to introspect at."""

    async def start(
        ask: str | IntrospectionStub | None = None,
        secret: str = SERVICE_SECRET,
        asking: dict[str, Any] | None = None,  # more Introspection options
        **options: Any,
    ) -> World:
        await signup(client, OWNER)
        token = await login(client, OWNER)
        clock = Clock()
        options.setdefault("required_scopes", RULES)
        if ask == "authsvc":
            options["introspection"] = Introspection(str(client.make_url("/auth/introspect")), SERVICE_ID, secret, **(asking or {}))
        elif isinstance(ask, IntrospectionStub):
            stub_app = web.Application()
            stub_app.router.add_post("/auth/introspect", ask.introspect)
            stub = await aiohttp_client(stub_app)
            options["introspection"] = Introspection(str(stub.make_url("/auth/introspect")), SERVICE_ID, secret, **(asking or {}))
        verifier = TokenVerifier(
            str(client.make_url("/.well-known/jwks.json")),
            issuer=settings.issuer,
            audience=settings.audience,
            public_paths=("/healthz",),
            clock=clock,
            **options,
        )
        service = await aiohttp_client(make_service(verifier))
        return World(client, service, verifier, token, settings, clock)

    return start


@pytest.fixture
async def world(start) -> World:
    return await start()


async def whoami(world: World, token: str, path: str = "/whoami") -> dict[str, Any]:
    resp = await world.service.get(path, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def assert_insufficient(resp: Any, scope: str) -> None:
    await assert_error(resp, 403, "insufficient_scope")
    assert resp.headers["WWW-Authenticate"] == f'Bearer realm="api", error="insufficient_scope", scope="{scope}"'
    assert scope in (await resp.json())["message"]


async def assert_invalid(resp: Any) -> None:
    await assert_error(resp, 401, "invalid_token")
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="api", error="invalid_token"'


# --- user tokens ---


async def test_a_login_token_carries_its_roles_scopes(world, db):
    assert jwt.decode(world.token, options={"verify_signature": False})["scope"] == "profile todos"
    user_id = await db.fetchval("SELECT id FROM users WHERE email = $1", OWNER)
    me = await whoami(world, world.token)
    assert me == {"kind": "user", "scopes": ["profile", "todos"], "client_id": None, "sub": str(user_id)}
    await assert_insufficient(await world.service.get("/orders", headers=bearer(world.token)), "orders:read")


async def test_legacy_scopes_are_what_a_token_without_the_claim_may_do(start):
    world = await start(legacy_scopes=("orders:read", "profile"))
    assert (await whoami(world, world.unscoped(), "/orders"))["scopes"] == ["orders:read", "profile"]
    # A token that states its scopes gets those, not the legacy ones.
    await assert_insufficient(await world.service.get("/orders", headers=bearer(world.scoped("profile"))), "orders:read")


async def test_a_user_token_with_scopes_passes_the_prefix_rules_it_meets(world):
    token = world.scoped("orders:read profile")
    me = await whoami(world, token, "/orders")
    assert me["kind"] == "user" and me["scopes"] == ["orders:read", "profile"] and me["client_id"] is None
    assert (await whoami(world, token, "/orders/7"))["kind"] == "user"  # below the prefix, by route pattern too
    await whoami(world, world.scoped(""), "/orders-archive")  # "/orders" covers segments, not "/orders-archive"
    # A narrower prefix adds its scope to the wider one's: the challenge names both.
    resp = await world.service.get("/orders/admin/x", headers=bearer(token))
    await assert_insufficient(resp, "orders:admin orders:read")
    await whoami(world, world.scoped("orders:admin orders:read"), "/orders/admin/x")
    resp = await world.service.get("/orders/admin/x", headers=bearer(world.scoped("orders:admin")))
    await assert_insufficient(resp, "orders:admin orders:read")


async def test_require_scopes_on_a_handler_and_on_a_view_method(world):
    resp = await world.service.get("/reports", headers=bearer(world.scoped("reports")))
    await assert_insufficient(resp, "orders:read reports")
    me = await whoami(world, world.scoped("reports orders:read"), "/reports")
    assert me["scopes"] == ["orders:read", "reports"]
    await assert_insufficient(await world.service.get("/report", headers=bearer(world.scoped("orders:read"))), "reports")
    resp = await world.service.get("/report", headers=bearer(world.scoped("reports")))
    assert resp.status == 200 and await resp.json() == {"report": True}


async def test_require_scopes_on_a_public_path_answers_401_not_the_handler(world):
    resp = await world.service.get("/healthz", headers=bearer(world.scoped("health")))
    await assert_error(resp, 401, "unauthorized")  # public: the middleware verified nothing
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize(
    "scope",
    [["orders:read"], 7, None, "orders:read  profile", " orders:read", 'orders"read', "orders\\read", "é"],
    ids=["list", "number", "null", "double_space", "leading_space", "quote", "backslash", "non_ascii"],
)
async def test_a_scope_claim_that_is_not_rfc6749_scope_is_an_invalid_token(world, scope):
    await assert_invalid(await world.service.get("/whoami", headers=bearer(world.scoped(scope))))
    await whoami(world, world.token)  # the real token still works


async def test_a_user_token_that_also_names_a_client_is_refused(world):
    token = sign(world.authsvc.app, {**jwt.decode(world.scoped("profile"), options={"verify_signature": False}), "client_id": "cl_x"})
    await assert_invalid(await world.service.get("/whoami", headers=bearer(token)))


# --- client tokens ---


async def test_a_client_token_is_kind_client_with_its_client_id(world):
    token = world.client_token("cl_0123456789abcdef", "orders:read orders:write")
    me = await whoami(world, token, "/orders")
    assert me == {
        "kind": "client",
        "scopes": ["orders:read", "orders:write"],
        "client_id": "cl_0123456789abcdef",
        "sub": "cl_0123456789abcdef",
    }
    await assert_insufficient(await world.service.get("/orders/admin/x", headers=bearer(token)), "orders:admin orders:read")


@pytest.mark.parametrize(
    "change",
    [{"sid": str(uuid.uuid4())}, {"sub": "cl_other"}, {"scope": None}, {"client_id": 7}],
    ids=["with_sid", "sub_is_another_client", "without_scope", "client_id_not_a_string"],
)
async def test_a_malformed_client_token_is_an_invalid_token(start, change):
    # legacy_scopes are for old user tokens only: a client token without scope is refused anyway.
    world = await start(legacy_scopes=("orders:read",))
    claims = jwt.decode(world.client_token(), options={"verify_signature": False})
    claims = {name: value for name, value in {**claims, **change}.items() if value is not None}
    token = sign(world.authsvc.app, claims)
    await assert_invalid(await world.service.get("/orders", headers=bearer(token)))
    await whoami(world, world.client_token(), "/orders")  # the control: unchanged, it passes


# --- API keys ---


async def test_without_introspection_an_api_key_is_an_invalid_token(world):
    assert world.verifier.introspector is None
    await assert_invalid(await world.service.get("/whoami", headers=bearer(api_key())))


async def test_real_authsvc_says_an_unknown_key_is_inactive_and_the_no_is_cached_briefly(start):
    world = await start("authsvc")
    introspector = world.verifier.introspector
    key = api_key()
    await assert_invalid(await world.service.get("/whoami", headers=bearer(key)))
    await assert_invalid(await world.service.get("/whoami", headers=bearer(key)))
    assert introspector.calls == 1  # the second came from the cache
    world.clock.now += introspector.config.inactive_ttl
    await assert_invalid(await world.service.get("/whoami", headers=bearer(key)))
    assert introspector.calls == 2


async def test_a_refused_introspection_credential_is_503_never_cached_and_never_logged(start, caplog):
    world = await start("authsvc", secret="not-" + SERVICE_SECRET)
    key = api_key()
    with caplog.at_level(logging.DEBUG):
        for _ in range(2):
            resp = await world.service.get("/whoami", headers=bearer(key))
            await assert_error(resp, 503, "temporarily_unavailable")
    assert world.verifier.introspector.calls == 2  # "cannot say" is not remembered
    assert any("answered 401" in record.getMessage() for record in caplog.records)
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert key not in logged and SERVICE_SECRET not in logged


async def test_an_active_api_key_is_kind_api_key_with_its_scopes(start):
    stub = IntrospectionStub()
    world = await start(stub)
    key = api_key()
    stub.answers[key] = {
        "active": True,
        "token_type": "api_key",
        "sub": "12",
        "scope": "orders:read profile",
        "exp": int(time.time()) + 3600,
        "key_id": str(uuid.uuid4()),
    }
    me = await whoami(world, key, "/orders")
    assert me == {"kind": "api_key", "scopes": ["orders:read", "profile"], "client_id": None, "sub": "12"}
    await assert_insufficient(await world.service.get("/orders/admin/x", headers=bearer(key)), "orders:admin orders:read")
    # One question, asked as RFC 7662 says: a form POST with client_secret_basic.
    credential = base64.b64encode(f"{SERVICE_ID}:{SERVICE_SECRET}".encode()).decode()
    assert stub.seen == [(f"Basic {credential}", "application/x-www-form-urlencoded", key)]
    # Cached for the ttl (a deleted key keeps working that long here), then asked again.
    world.clock.now += world.verifier.introspector.config.ttl - 0.01
    await whoami(world, key)
    assert len(stub.seen) == 1
    stub.answers[key] = {"active": False}
    world.clock.now += 0.01
    await assert_invalid(await world.service.get("/whoami", headers=bearer(key)))
    assert len(stub.seen) == 2


async def test_an_active_answer_is_never_cached_past_the_keys_exp(start):
    stub = IntrospectionStub()
    world = await start(stub)
    key = api_key()
    stub.answers[key] = {"active": True, "token_type": "api_key", "sub": "12", "scope": "", "exp": int(time.time()) + 3}
    await whoami(world, key)
    world.clock.now += 4  # within the 10 s ttl, beyond the key's exp
    await whoami(world, key)
    assert len(stub.seen) == 2


@pytest.mark.parametrize(
    "answer",
    [
        {"active": True, "token_type": "access_token", "sub": "12", "scope": "orders:read"},
        {"active": True, "sub": "12", "scope": "orders:read"},
        {"active": "true", "token_type": "api_key", "sub": "12", "scope": "orders:read"},
        {"active": True, "token_type": "api_key", "scope": "orders:read"},
        {"active": True, "token_type": "api_key", "sub": "12", "scope": ["orders:read"]},
        {"active": True, "token_type": "api_key", "sub": "12", "scope": "orders:read", "exp": int(time.time()) - 1},
    ],
    ids=["other_token_type", "no_token_type", "active_not_bool", "no_sub", "scope_list", "expired"],
)
async def test_an_answer_that_is_not_an_active_api_key_is_an_invalid_token(start, answer):
    stub = IntrospectionStub()
    world = await start(stub)
    key = api_key()
    stub.answers[key] = answer
    await assert_invalid(await world.service.get("/whoami", headers=bearer(key)))


@pytest.mark.parametrize("answer", [500, 401, "not json", "[1, 2]"], ids=["500", "401", "not_json", "not_an_object"])
async def test_no_usable_answer_is_503_and_asked_again_next_time(start, answer):
    stub = IntrospectionStub()
    world = await start(stub)
    key = api_key()
    stub.answers[key] = answer
    for _ in range(2):
        await assert_error(await world.service.get("/whoami", headers=bearer(key)), 503, "temporarily_unavailable")
    assert len(stub.seen) == 2


@pytest.mark.parametrize(
    "token",
    ["ak_", "ak_" + "a" * 300, "ak_abc.def", "ak_abc+def/ghi=", "ak_abc def"],
    ids=["empty", "too_long", "dot", "base64_not_urlsafe", "space"],
)
async def test_a_token_not_shaped_like_a_key_is_refused_without_asking(start, token):
    stub = IntrospectionStub()
    world = await start(stub)
    await assert_invalid(await world.service.get("/whoami", headers=bearer(token)))
    assert stub.seen == []


async def test_concurrent_requests_with_one_key_share_one_question(start):
    stub = IntrospectionStub()
    world = await start(stub)
    key = api_key()
    stub.answers[key] = {"active": True, "token_type": "api_key", "sub": "12", "scope": "profile"}
    identities = await asyncio.gather(*(world.verifier.identify(key) for _ in range(5)))
    assert {identity.kind for identity in identities} == {"api_key"}
    assert len(stub.seen) == 1


async def test_the_cache_is_bounded(start):
    stub = IntrospectionStub()
    limit = 3
    world = await start(stub, asking={"max_entries": limit})
    keys = [api_key() for _ in range(limit + 1)]
    for key in keys:
        assert await world.verifier.identify(key) is None
    await world.verifier.identify(keys[-1])  # cached
    assert len(stub.seen) == limit + 1
    await world.verifier.identify(keys[0])  # the oldest made room
    assert len(stub.seen) == limit + 2


# --- configuration mistakes fail at start-up, not as "needs nothing" ---


@pytest.mark.parametrize("scopes", [(), ("orders read",), ('orders"',)], ids=["none", "space", "quote"])
def test_require_scopes_refuses_what_is_not_a_scope_name(scopes):
    with pytest.raises(ValueError):
        require_scopes(*scopes)


def test_scope_rules_refuse_a_prefix_without_slash_and_bad_names():
    with pytest.raises(ValueError):
        ScopeRules({"orders": ("orders:read",)})
    with pytest.raises(ValueError):
        ScopeRules({"/orders": ("orders read",)})


def test_introspection_settings_are_bounded():
    with pytest.raises(ValueError):
        Introspection("http://127.0.0.1/auth/introspect", SERVICE_ID, SERVICE_SECRET, ttl=3600)
    assert SERVICE_SECRET not in repr(Introspection("http://x/", SERVICE_ID, SERVICE_SECRET))
