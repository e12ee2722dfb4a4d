"""The application factory: one Settings in, one ready-to-run aiohttp app out."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import aiohttp_cors
from aiohttp import web

from authsvc import background
from authsvc.appkeys import (
    ACCOUNTS,
    API_KEYS,
    CLIENTS,
    CLOCK,
    CREDENTIALS,
    HASHER,
    METRICS,
    OPENAPI,
    PASSWORD_POLICY,
    POOL,
    SCOPES,
    SESSIONS,
    SETTINGS,
    SIGNUPS,
    THROTTLE,
    TOKENS,
    USER_ADMIN,
)
from authsvc.auth import throttle
from authsvc.auth.accounts import Accounts
from authsvc.auth.admin_users import UserAdmin
from authsvc.auth.api_keys import LAST_USED_FLUSH_EVERY, ApiKeys
from authsvc.auth.assertions import ClientKeys
from authsvc.auth.clients import Clients
from authsvc.auth.credentials import Credentials
from authsvc.auth.keyring import RELOAD_EVERY, KeyRing
from authsvc.auth.passwords import PasswordHasher
from authsvc.auth.scopes import ScopeModel
from authsvc.auth.sessions import Sessions
from authsvc.auth.tokens import TokenService
from authsvc.db import pool
from authsvc.http.breached import open_policy
from authsvc.http.middlewares import bearer_auth, errors_to_json, security_headers
from authsvc.http.observe import echo_request_id, observe
from authsvc.http.openapi import document_bytes
from authsvc.http.views import (
    admin_clients,
    admin_users,
    auth,
    health,
    metrics,
    oauth,
    openapi,
    todos,
    users,
    wellknown,
)
from authsvc.http.views import api_keys as api_keys_views
from authsvc.observability.logs import quiet_malformed_requests
from authsvc.observability.metrics import Metrics, metrics_ctx
from authsvc.settings import Settings

# Header limits, checked by aiohttp's parser before any of our code runs (400 past them).
# A request line or one header of 8 KiB is far more than any route or bearer token needs
# (nginx's default buffers are 8 KiB too); 64 headers is three times what browsers send.
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 64
SESSION_PRUNE_EVERY = 3600.0

log = logging.getLogger(__name__)


async def hasher_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    assert s.password_pepper is not None
    hasher = PasswordHasher(s.password_pepper, s.bcrypt_rounds, s.hash_workers, s.hash_queue)
    await hasher.start()
    app[HASHER] = hasher
    yield
    hasher.close()


async def password_policy_ctx(app: web.Application) -> AsyncIterator[None]:
    async with open_policy(app[SETTINGS]) as policy:
        app[PASSWORD_POLICY] = policy
        yield


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    async with pool.opened(app[SETTINGS]) as database:
        app[POOL] = database
        yield


async def throttle_ctx(app: web.Application) -> AsyncIterator[None]:
    async with throttle.running(app[POOL], app[SETTINGS], app.get(CLOCK, time.monotonic)) as (logins, signups):
        app[THROTTLE] = logins
        app[SIGNUPS] = signups
        yield


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    """The domain services, each built from what it needs, and their background loops."""
    s = app[SETTINGS]
    database, hasher, tokens = app[POOL], app[HASHER], app[TOKENS]
    sessions = Sessions(
        database,
        tokens,
        app[SCOPES],
        idle=timedelta(seconds=s.session_idle_timeout),
        lifetime=timedelta(seconds=s.session_lifetime),
        reuse_grace=timedelta(seconds=s.refresh_reuse_grace),
    )
    credentials = Credentials(database, hasher, app[THROTTLE], app[METRICS])
    app[SESSIONS] = sessions
    app[CREDENTIALS] = credentials
    app[ACCOUNTS] = Accounts(
        database, hasher, app[PASSWORD_POLICY], app[SIGNUPS], credentials, default_role=s.default_role
    )
    token_endpoint = s.public_url.rstrip("/") + "/auth/token"
    clients = Clients(
        database,
        app[SCOPES],
        tokens,
        app[THROTTLE],
        ClientKeys(),
        audiences=(token_endpoint, s.issuer),
        leeway=s.token_leeway,
    )
    app[CLIENTS] = clients
    app[USER_ADMIN] = UserAdmin(database, app[SCOPES])
    api_keys = ApiKeys(database, app[SCOPES])
    app[API_KEYS] = api_keys

    async def reload_keys() -> None:
        if await tokens.keys.reload_if_changed():
            log.info("signing keys reloaded; active key %s", tokens.keys.active.kid)

    async with background.running(
        background.every(RELOAD_EVERY, reload_keys, "reloading the signing keys"),
        background.every(SESSION_PRUNE_EVERY, sessions.prune, "pruning ended sessions"),
        background.every(LAST_USED_FLUSH_EVERY, api_keys.flush, "recording when API keys were used"),
        background.every(SESSION_PRUNE_EVERY, clients.prune, "pruning used client assertions"),
    ):
        yield
    # The uses since the last round: lost if the database is away now, which costs only a date.
    try:
        await api_keys.flush()
    except pool.UNAVAILABLE_ERRORS:
        log.info("database unavailable at shutdown: the latest uses of API keys are not recorded")
    except Exception:
        log.warning("could not record when API keys were last used", exc_info=True)


def _setup_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    if not origins:
        return
    # Bearer tokens travel in a header, never in cookies: no credentials mode, explicit origins.
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False,
        allow_headers=("Authorization", "Content-Type"),
        expose_headers=("Location", "Retry-After", "WWW-Authenticate"),
        allow_methods=("GET", "POST", "PUT", "PATCH", "DELETE"),
        max_age=600,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        cors.add(route)


def key_ring(settings: Settings) -> KeyRing:
    if settings.token_algorithm == "HS256":
        assert settings.token_secret is not None
        return KeyRing.symmetric(settings.token_secret)
    # A retired key verifies for as long as a token it signed can live.
    keep = timedelta(seconds=settings.access_token_ttl + settings.token_leeway)
    return KeyRing.from_file(settings.keys_file, keep)


def create_app(settings: Settings, *, clock: Callable[[], float] | None = None) -> web.Application:
    """Build the app; the database URL, secrets and keys must already be resolved (see cli.py).

    `clock`: monotonic seconds for the login throttle's memory (tests pass one they move)."""
    if settings.database_url is None or settings.password_pepper is None:
        raise ValueError("create_app needs a database URL and a password pepper")
    quiet_malformed_requests()
    app = web.Application(
        # observe first: it must see the final status, errors included.
        middlewares=[observe, errors_to_json, bearer_auth],
        client_max_size=settings.max_body_bytes,
        # Idle and half-sent connections (slowloris) are closed after this, not after an hour;
        # after an error answer, the rest of an unread body is waited for one second at most.
        handler_args={
            "keepalive_timeout": settings.idle_timeout,
            "lingering_time": 1.0,
            "max_line_size": MAX_LINE_SIZE,
            "max_field_size": MAX_FIELD_SIZE,
            "max_headers": MAX_HEADERS,
            # A handler runs to its end even if the client goes away: a login must record its
            # outcome (else a disconnect would be a free guess), the rest is milliseconds of SQL.
            "handler_cancellation": False,
        },
    )
    app[SETTINGS] = settings
    if clock is not None:
        app[CLOCK] = clock
    app[METRICS] = Metrics()
    app[SCOPES] = ScopeModel.from_settings(settings)
    app[TOKENS] = TokenService(
        key_ring(settings), settings.issuer, settings.audience, settings.access_token_ttl, settings.token_leeway
    )
    app.cleanup_ctx.append(hasher_ctx)
    app.cleanup_ctx.append(password_policy_ctx)
    app.cleanup_ctx.append(pool_ctx)
    app.cleanup_ctx.append(throttle_ctx)
    app.cleanup_ctx.append(services_ctx)
    app.cleanup_ctx.append(metrics_ctx)
    for module in (
        health, wellknown, openapi, auth, oauth, users, api_keys_views, todos, admin_users, admin_clients, metrics
    ):
        app.add_routes(module.routes)
    app[OPENAPI] = document_bytes(app, settings)
    _setup_cors(app, settings.cors_origins)
    app.on_response_prepare.append(security_headers)
    app.on_response_prepare.append(echo_request_id)
    return app
