"""The shipped verifier's scopes, subject kinds and API keys, in a second service in front of a real authsvc.

Every token a test relies on comes from authsvc's own endpoints: logins narrowed by `scope`
(POST /auth), a registered client's client_credentials grant (POST /auth/token, POST /auth), API
keys made by their owner (POST /users/me/api-keys) and introspected by a registered client that
holds the `introspect` scope (or an AUTHSVC_INTROSPECTION_CLIENTS pair). Two stand-ins remain,
each only where the real thing cannot show the case:

- `forge` signs, with authsvc's own active key, claims authsvc never issues (a `scope` that is
  not RFC 6749 scope syntax, a user token naming a client, a client token without `scope`, a
  token from before tokens carried a scope): the signature is good, so only the verifier's
  reading of the claims can refuse them.
- `BrokenIntrospection` plays an authsvc that fails in ways the real one cannot be made to (a
  500, a timeout, a body that is not JSON or not an object, an answer about an `ak_` key that
  RFC 7662 and spec14 would never give).
"""

from __future__ import annotations

import asyncio
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
from helpers import PASSWORD, assert_error, bearer, login, signup

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

OWNER = "owner@example.com"  # the default role: profile todos
STAFF = "staff@example.com"  # a role with the second service's scopes: narrowed logins, API keys
ADMIN = "root@example.com"  # registers the clients
SERVICE_ID = "orders"  # an AUTHSVC_INTROSPECTION_CLIENTS pair, the older way to introspect
SERVICE_SECRET = secrets.token_urlsafe(48)
SERVICE_SCOPES = ("orders:read", "orders:write", "orders:admin", "reports", "health")
RULES = {"/orders": ("orders:read",), "/orders/admin": ("orders:admin",)}


@pytest.fixture
def settings(base_settings: Settings, database_url: str) -> Settings:
    return base_settings.replace(
        scopes=SERVICE_SCOPES,
        roles=(
            ("user", ("profile", "todos")),
            ("staff", ("profile", "todos", *SERVICE_SCOPES)),
            ("admin", ("profile", "todos", "admin")),
        ),
        introspection_clients=((SERVICE_ID, SERVICE_SECRET),),
    )


def unknown_key() -> str:
    """Of the shape spec14 gives (ak_ + 8-char id part + _ + 256 random bits), never issued."""
    return f"ak_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


DROP = object()  # a claim's value in `forge`: leave the claim out


def forge(app: web.Application, claims: dict[str, Any]) -> str:
    """A token authsvc would never issue, signed with its active key (see the module's docstring)."""
    key = app[TOKENS].keys.active
    claims = {name: value for name, value in claims.items() if value is not DROP}
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"typ": jwtcheck.TOKEN_TYPE, "kid": key.kid})


@dataclass
class BrokenIntrospection:
    """An RFC 7662 endpoint failing as real authsvc cannot be made to: per token, a body it
    answers, an int status, a str sent as the JSON body, or HANG (no answer until released)."""

    HANG = "hang"

    answers: dict[str, Any] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)  # the tokens asked about
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def introspect(self, request: web.Request) -> web.Response:
        token = str((await request.post())["token"])
        self.seen.append(token)
        answer = self.answers.get(token, {"active": False})
        if answer == self.HANG:
            await self.release.wait()
            answer = {"active": False}
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


# --- authsvc's side: accounts, clients, keys, all through its endpoints ---


async def register(authsvc: TestClient, admin: dict[str, str], name: str, scopes: list[str]) -> dict[str, Any]:
    """A client made by POST /admin/clients: its id and its first secret."""
    resp = await authsvc.post("/admin/clients", json={"name": name, "scopes": scopes}, headers=admin)
    assert resp.status == 201, await resp.text()
    return await resp.json()


@dataclass
class World:
    authsvc: TestClient
    service: TestClient
    verifier: TokenVerifier
    token: str  # OWNER's login token (the default role: scope "profile todos")
    staff: dict[str, Any]  # STAFF as signed up (its id)
    admin: dict[str, str]  # an admin login's bearer header
    clock: Clock

    async def scoped(self, scope: str) -> str:
        """STAFF's login asking for `scope` (POST /auth): the token carries exactly that."""
        resp = await self.authsvc.post("/auth", json={"email": STAFF, "password": PASSWORD, "scope": scope})
        body = await resp.json()
        assert resp.status == 200, body
        assert body["scope"] == " ".join(sorted(scope.split()))
        return body["access_token"]

    async def client_token(self, scopes: tuple[str, ...] = ("orders:read",), name: str = "reporting") -> tuple[str, str]:
        """(client_id, token): a registered client's client_credentials grant (POST /auth/token)."""
        made = await register(self.authsvc, self.admin, name, list(scopes))
        form = {"grant_type": "client_credentials", "client_id": made["id"], "client_secret": made["client_secret"]}
        resp = await self.authsvc.post("/auth/token", data=form)
        body = await resp.json()
        assert resp.status == 200, body
        assert body["scope"] == " ".join(sorted(scopes)) and "refresh_token" not in body
        return made["id"], body["access_token"]

    async def api_key(self, scopes: tuple[str, ...] = ("orders:read", "profile"), **extra: Any) -> dict[str, Any]:
        """STAFF's API key (POST /users/me/api-keys from a login session): its id and key."""
        auth = bearer(await login(self.authsvc, STAFF))
        body = {"name": "script", "scopes": list(scopes), **extra}
        resp = await self.authsvc.post("/users/me/api-keys", json=body, headers=auth)
        assert resp.status == 201, await resp.text()
        return {**await resp.json(), "auth": auth}


@pytest.fixture
def start(client: TestClient, aiohttp_client: Any, settings: Settings, db):
    """The service in front of authsvc. `ask` says whom the verifier asks about API keys: None
    (nobody), "authsvc" (a client registered with `asker_scopes`, by its secret or `secret`),
    "configured" (the AUTHSVC_INTROSPECTION_CLIENTS pair) or a BrokenIntrospection."""

    async def start(
        ask: str | BrokenIntrospection | None = None,
        *,
        secret: str | None = None,
        asker_scopes: tuple[str, ...] = ("introspect",),
        asking: dict[str, Any] | None = None,  # more Introspection options
        **options: Any,
    ) -> World:
        await signup(client, OWNER)
        staff = await signup(client, STAFF)
        await signup(client, ADMIN)
        # Roles before the first login: a promotion, no session to end.
        await db.execute("UPDATE users SET roles = '{staff}' WHERE email = $1", STAFF)
        await db.execute("UPDATE users SET roles = '{admin}' WHERE email = $1", ADMIN)
        token = await login(client, OWNER)
        admin = bearer(await login(client, ADMIN))
        clock = Clock()
        options.setdefault("required_scopes", RULES)
        url = str(client.make_url("/auth/introspect"))
        if ask == "authsvc":
            asker = await register(client, admin, "orders-service", list(asker_scopes))
            options["introspection"] = Introspection(url, asker["id"], secret or asker["client_secret"], **(asking or {}))
        elif ask == "configured":
            options["introspection"] = Introspection(url, SERVICE_ID, SERVICE_SECRET, **(asking or {}))
        elif isinstance(ask, BrokenIntrospection):
            stub_app = web.Application()
            stub_app.router.add_post("/auth/introspect", ask.introspect)
            stub = await aiohttp_client(stub_app)
            url = str(stub.make_url("/auth/introspect"))
            options["introspection"] = Introspection(url, SERVICE_ID, SERVICE_SECRET, **(asking or {}))
        verifier = TokenVerifier(
            str(client.make_url("/.well-known/jwks.json")),
            issuer=settings.issuer,
            audience=settings.audience,
            public_paths=("/healthz",),
            clock=clock,
            **options,
        )
        service = await aiohttp_client(make_service(verifier))
        return World(client, service, verifier, token, staff, admin, clock)

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
    assert claims_of(world.token)["scope"] == "profile todos"
    user_id = await db.fetchval("SELECT id FROM users WHERE email = $1", OWNER)
    me = await whoami(world, world.token)
    assert me == {"kind": "user", "scopes": ["profile", "todos"], "client_id": None, "sub": str(user_id)}
    await assert_insufficient(await world.service.get("/orders", headers=bearer(world.token)), "orders:read")
    # A login that asks for no scope gets all its role grants.
    staff = await login(world.authsvc, STAFF)
    assert (await whoami(world, staff, "/orders/admin/x"))["scopes"] == sorted(("profile", "todos", *SERVICE_SCOPES))


async def test_legacy_scopes_are_what_a_forged_token_without_the_claim_may_do(start):
    world = await start(legacy_scopes=("orders:read", "profile"))
    # Forged: authsvc issued tokens without `scope` only before this version.
    legacy = forge(world.authsvc.app, {**claims_of(world.token), "scope": DROP})
    assert (await whoami(world, legacy, "/orders"))["scopes"] == ["orders:read", "profile"]
    # A token that states its scopes gets those, not the legacy ones.
    resp = await world.service.get("/orders", headers=bearer(await world.scoped("profile")))
    await assert_insufficient(resp, "orders:read")


async def test_a_user_token_with_scopes_passes_the_prefix_rules_it_meets(world):
    token = await world.scoped("orders:read profile")
    me = await whoami(world, token, "/orders")
    assert me == {"kind": "user", "scopes": ["orders:read", "profile"], "client_id": None, "sub": str(world.staff["id"])}
    assert (await whoami(world, token, "/orders/7"))["kind"] == "user"  # below the prefix, by route pattern too
    await whoami(world, world.token, "/orders-archive")  # "/orders" covers segments, not "/orders-archive"
    # A narrower prefix adds its scope to the wider one's: the challenge names both.
    resp = await world.service.get("/orders/admin/x", headers=bearer(token))
    await assert_insufficient(resp, "orders:admin orders:read")
    await whoami(world, await world.scoped("orders:admin orders:read"), "/orders/admin/x")
    resp = await world.service.get("/orders/admin/x", headers=bearer(await world.scoped("orders:admin")))
    await assert_insufficient(resp, "orders:admin orders:read")


async def test_require_scopes_on_a_handler_and_on_a_view_method(world):
    resp = await world.service.get("/reports", headers=bearer(await world.scoped("reports")))
    await assert_insufficient(resp, "orders:read reports")
    me = await whoami(world, await world.scoped("reports orders:read"), "/reports")
    assert me["scopes"] == ["orders:read", "reports"]
    resp = await world.service.get("/report", headers=bearer(await world.scoped("orders:read")))
    await assert_insufficient(resp, "reports")
    resp = await world.service.get("/report", headers=bearer(await world.scoped("reports")))
    assert resp.status == 200 and await resp.json() == {"report": True}


async def test_require_scopes_on_a_public_path_answers_401_not_the_handler(world):
    resp = await world.service.get("/healthz", headers=bearer(await world.scoped("health")))
    await assert_error(resp, 401, "unauthorized")  # public: the middleware verified nothing
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize(
    "scope",
    [["orders:read"], 7, None, "orders:read  profile", " orders:read", 'orders"read', "orders\\read", "é"],
    ids=["list", "number", "null", "double_space", "leading_space", "quote", "backslash", "non_ascii"],
)
async def test_a_forged_scope_claim_that_is_not_rfc6749_scope_is_an_invalid_token(world, scope):
    # Forged: authsvc writes `scope` as sorted, single-spaced scope names, never these.
    token = forge(world.authsvc.app, {**claims_of(world.token), "scope": scope})
    await assert_invalid(await world.service.get("/whoami", headers=bearer(token)))
    await whoami(world, world.token)  # the real token still works


async def test_a_forged_user_token_that_also_names_a_client_is_refused(world):
    # Forged: authsvc's user tokens carry `sid` and never `client_id`.
    token = forge(world.authsvc.app, {**claims_of(await world.scoped("profile")), "client_id": "cl_x"})
    await assert_invalid(await world.service.get("/whoami", headers=bearer(token)))


# --- client tokens ---


async def test_a_client_token_is_kind_client_with_its_client_id(world):
    client_id, token = await world.client_token(("orders:read", "orders:write"))
    assert client_id.startswith("cl_")
    me = await whoami(world, token, "/orders")
    assert me == {"kind": "client", "scopes": ["orders:read", "orders:write"], "client_id": client_id, "sub": client_id}
    await assert_insufficient(await world.service.get("/orders/admin/x", headers=bearer(token)), "orders:admin orders:read")


async def test_a_client_token_narrowed_by_scope_on_post_auth_holds_only_that(world):
    made = await register(world.authsvc, world.admin, "narrow", ["orders:read", "orders:admin"])
    login_body = {"client_id": made["id"], "client_secret": made["client_secret"], "scope": "orders:read"}
    resp = await world.authsvc.post("/auth", json=login_body)
    body = await resp.json()
    assert resp.status == 200 and body["scope"] == "orders:read", body
    token = body["access_token"]
    assert (await whoami(world, token, "/orders"))["scopes"] == ["orders:read"]
    await assert_insufficient(await world.service.get("/orders/admin/x", headers=bearer(token)), "orders:admin orders:read")


@pytest.mark.parametrize(
    "change",
    [{"sid": str(uuid.uuid4())}, {"sub": "cl_other"}, {"scope": DROP}, {"client_id": 7}],
    ids=["with_sid", "sub_is_another_client", "without_scope", "client_id_not_a_string"],
)
async def test_a_forged_malformed_client_token_is_an_invalid_token(start, change):
    # legacy_scopes are for old user tokens only: a client token without scope is refused anyway.
    world = await start(legacy_scopes=("orders:read",))
    _, real = await world.client_token()
    # Forged: authsvc's client tokens have sub = client_id (a string), a scope, and no sid.
    token = forge(world.authsvc.app, {**claims_of(real), **change})
    await assert_invalid(await world.service.get("/orders", headers=bearer(token)))
    await whoami(world, real, "/orders")  # the control: as authsvc issued it, it passes


# --- API keys, asked of real authsvc ---


async def test_without_introspection_an_api_key_is_an_invalid_token(world):
    assert world.verifier.introspector is None
    key = (await world.api_key())["key"]
    await assert_invalid(await world.service.get("/whoami", headers=bearer(key)))


@pytest.mark.parametrize("ask", ["authsvc", "configured"], ids=["registered_client", "introspection_clients"])
async def test_real_authsvc_says_an_unknown_key_is_inactive_and_the_no_is_cached_briefly(start, ask):
    world = await start(ask)
    introspector = world.verifier.introspector
    key = unknown_key()
    await assert_invalid(await world.service.get("/whoami", headers=bearer(key)))
    await assert_invalid(await world.service.get("/whoami", headers=bearer(key)))
    assert introspector.calls == 1  # the second came from the cache
    world.clock.now += introspector.config.inactive_ttl
    await assert_invalid(await world.service.get("/whoami", headers=bearer(key)))
    assert introspector.calls == 2


@pytest.mark.parametrize(
    ("how", "status"), [("wrong_secret", 401), ("without_introspect_scope", 403)], ids=["wrong_secret", "no_scope"]
)
async def test_a_refused_introspection_credential_is_503_never_cached_and_never_logged(start, caplog, how, status):
    wrong = "cs_" + secrets.token_urlsafe(32)
    if how == "wrong_secret":
        world = await start("authsvc", secret=wrong)
    else:
        world = await start("authsvc", asker_scopes=("orders:read",))
    made = await world.api_key()
    with caplog.at_level(logging.DEBUG):
        for _ in range(2):
            resp = await world.service.get("/whoami", headers=bearer(made["key"]))
            await assert_error(resp, 503, "temporarily_unavailable")
    assert world.verifier.introspector.calls == 2  # "cannot say" is not remembered
    assert any(f"answered {status}" in record.getMessage() for record in caplog.records)
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    for secret in (made["key"], wrong, world.verifier.introspector.config.client_secret):
        assert secret not in logged


async def test_an_active_api_key_is_kind_api_key_with_its_scopes(start):
    world = await start("authsvc")
    made = await world.api_key(("orders:read", "profile"))
    key = made["key"]
    me = await whoami(world, key, "/orders")
    assert me == {"kind": "api_key", "scopes": ["orders:read", "profile"], "client_id": None, "sub": str(world.staff["id"])}
    await assert_insufficient(await world.service.get("/orders/admin/x", headers=bearer(key)), "orders:admin orders:read")
    introspector = world.verifier.introspector
    assert introspector.calls == 1  # one question (RFC 7662: a form POST with client_secret_basic)
    # Its owner deletes it: cached for the ttl (it keeps working that long here), then asked again.
    resp = await world.authsvc.delete(f"/users/me/api-keys/{made['id']}", headers=made["auth"])
    assert resp.status == 204
    world.clock.now += introspector.config.ttl - 0.01
    await whoami(world, key)
    assert introspector.calls == 1
    world.clock.now += 0.01
    await assert_invalid(await world.service.get("/whoami", headers=bearer(key)))
    assert introspector.calls == 2


async def test_a_key_acts_with_no_more_than_its_owners_current_role(start, db):
    world = await start("authsvc")
    key = (await world.api_key(("orders:read", "profile")))["key"]
    assert (await whoami(world, key))["scopes"] == ["orders:read", "profile"]
    # The owner demoted: authsvc's answer holds the key's scopes the role still grants.
    await db.execute("UPDATE users SET roles = '{user}' WHERE email = $1", STAFF)
    world.clock.now += world.verifier.introspector.config.ttl
    assert (await whoami(world, key))["scopes"] == ["profile"]
    await assert_insufficient(await world.service.get("/orders", headers=bearer(key)), "orders:read")


async def test_an_active_answer_is_never_cached_past_the_keys_exp(start):
    # A ttl longer than the key's life: the key's exp, in authsvc's answer, bounds the cache.
    world = await start("authsvc", asking={"ttl": 120})
    key = (await world.api_key(("profile",), expires_in=60))["key"]
    await whoami(world, key)
    world.clock.now += 50
    await whoami(world, key)
    assert world.verifier.introspector.calls == 1
    world.clock.now += 11  # within the 120 s ttl, beyond the key's exp
    await whoami(world, key)  # (the key itself, by the wall clock, still has a minute)
    assert world.verifier.introspector.calls == 2


async def test_an_expired_key_is_inactive_at_authsvc_and_an_invalid_token(start, db):
    world = await start("authsvc")
    made = await world.api_key(("profile",), expires_in=60)
    await db.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", uuid.UUID(made["id"]))
    await assert_invalid(await world.service.get("/whoami", headers=bearer(made["key"])))
    assert world.verifier.introspector.calls == 1


@pytest.mark.parametrize(
    "token",
    ["ak_", "ak_" + "a" * 300, "ak_abc.def", "ak_abc+def/ghi=", "ak_abc def"],
    ids=["empty", "too_long", "dot", "base64_not_urlsafe", "space"],
)
async def test_a_token_not_shaped_like_a_key_is_refused_without_asking(start, token):
    world = await start("authsvc")
    await assert_invalid(await world.service.get("/whoami", headers=bearer(token)))
    assert world.verifier.introspector.calls == 0


async def test_concurrent_requests_with_one_key_share_one_question(start):
    world = await start("authsvc")
    key = (await world.api_key(("profile",)))["key"]
    identities = await asyncio.gather(*(world.verifier.identify(key) for _ in range(5)))
    assert {identity.kind for identity in identities} == {"api_key"}
    assert world.verifier.introspector.calls == 1


async def test_the_cache_is_bounded(start):
    limit = 3
    world = await start("authsvc", asking={"max_entries": limit})
    keys = [unknown_key() for _ in range(limit + 1)]
    for key in keys:
        assert await world.verifier.identify(key) is None
    await world.verifier.identify(keys[-1])  # cached
    assert world.verifier.introspector.calls == limit + 1
    await world.verifier.identify(keys[0])  # the oldest made room
    assert world.verifier.introspector.calls == limit + 2


# --- API keys, asked of a broken authsvc (failures the real one cannot be made to show) ---


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
    ids=["other_token_type", "no_token_type", "active_not_bool", "no_sub", "scope_list", "active_past_exp"],
)
async def test_a_broken_answer_that_is_not_an_active_api_key_is_an_invalid_token(start, answer):
    stub = BrokenIntrospection()
    world = await start(stub)
    key = unknown_key()
    stub.answers[key] = answer
    await assert_invalid(await world.service.get("/whoami", headers=bearer(key)))
    assert stub.seen == [key]


@pytest.mark.parametrize(
    "answer", [500, "not json", "[1, 2]", BrokenIntrospection.HANG], ids=["500", "not_json", "not_an_object", "timeout"]
)
async def test_no_usable_answer_is_503_and_asked_again_next_time(start, answer):
    stub = BrokenIntrospection()
    world = await start(stub, asking={"timeout": 0.05})
    key = unknown_key()
    stub.answers[key] = answer
    try:
        for _ in range(2):
            await assert_error(await world.service.get("/whoami", headers=bearer(key)), 503, "temporarily_unavailable")
    finally:
        stub.release.set()  # the hung answers end, so the stub's server stops at once
    assert stub.seen == [key, key]


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
