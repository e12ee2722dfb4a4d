"""What the verifier puts on a request it lets through: one place, typed keys."""

from __future__ import annotations

from typing import Any

from aiohttp import web

# The verified claims of a JWT, or for an API key the introspection answer (sub, scope, key_id...).
CLAIMS: web.RequestKey[dict[str, Any]] = web.RequestKey("authsvc_claims", dict)
SCOPES: web.RequestKey[frozenset[str]] = web.RequestKey("authsvc_scopes", frozenset)
# The client_id of a client_credentials token; None for users and API keys.
CLIENT_ID: web.RequestKey[str | None] = web.RequestKey("authsvc_client_id")
# "user" (a login session), "client" (a service identity) or "api_key".
SUBJECT_KIND: web.RequestKey[str] = web.RequestKey("authsvc_subject_kind", str)
