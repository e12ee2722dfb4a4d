"""Every piece of shared application and request state, under a typed key."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    pass

SETTINGS = web.AppKey("settings", "Settings")
POOL = web.AppKey("pool", "Database")
HASHER = web.AppKey("hasher", "PasswordHasher")
PASSWORD_POLICY = web.AppKey("password_policy", "PasswordPolicy")
TOKENS = web.AppKey("tokens", "TokenService")
THROTTLE = web.AppKey("throttle", "LoginThrottle")
SIGNUPS = web.AppKey("signups", "SignupBudget")
# The throttle's clock (monotonic seconds); tests pass one they can move.
CLOCK = web.AppKey("clock", "Callable[[], float]")
METRICS = web.AppKey("metrics", "Metrics")
# The domain services, built once at start-up from the pieces above (app.services_ctx).
SESSIONS = web.AppKey("sessions", "Sessions")
CREDENTIALS = web.AppKey("credentials", "Credentials")
ACCOUNTS = web.AppKey("accounts", "Accounts")
CLIENTS = web.AppKey("clients", "Clients")
API_KEYS = web.AppKey("api_keys", "ApiKeys")
SCOPES = web.AppKey("scopes", "ScopeModel")
USER_ADMIN = web.AppKey("user_admin", "UserAdmin")
OPENAPI = web.AppKey("openapi", bytes)  # the document, as served

# Set by the bearer middleware on protected routes: the user, or for a route whose statement
# checks the session itself (middlewares.checks_session), what that statement is to check.
CURRENT_USER = web.RequestKey("current_user", "User")
CURRENT_SESSION = web.RequestKey("current_session", uuid.UUID)
LIVE_SESSION = web.RequestKey("live_session", "LiveSession | LiveKey")
# Set by the bearer middleware on every protected route: who is asking and what it may do.
PRINCIPAL = web.RequestKey("principal", "Principal")
# Set by the observe middleware on every request.
REQUEST_ID = web.RequestKey("request_id", str)
