"""The bare reference server of bench.perf: what an authenticated read costs with nothing of ours.

    python -m bench.reference --port 8081 --database-url URL --jwks FILE [--workers N]
                              [--issuer authsvc] [--audience authsvc] [--pool-min 2] [--pool-max 10]

A minimal aiohttp app with `GET /users/me` and `GET /todos` and no middleware, no
marshmallow, no error handling of ours. Each request decodes the bearer JWT the way authsvc
does (PyJWT, the algorithm pinned to the key's, audience, issuer, leeway and required claims
checked) with the public key authsvc publishes at /.well-known/jwks.json, then runs the very
statements authsvc runs, over an asyncpg pool of the same size: the session query behind
every authenticated request (authsvc.db.repo.sessions.LIVE_USER) for /users/me, and for
/todos the first page joined to that check in one statement (authsvc.db.repo.todos.PAGE,
limit 50), imported from authsvc so the two servers cannot drift apart; its pool, like
authsvc's, releases connections without a reset query. The answers are the same JSON
documents. With --workers N > 1 the workers are spawned processes
sharing the port with SO_REUSEPORT, as `authsvc serve --workers N` does; with 1, the process
serves itself. The event loop is uvloop where installed, as in authsvc.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import jwt
from aiohttp import web

from authsvc.db.pool import keep_session
from authsvc.db.repo.sessions import LIVE_USER
from authsvc.db.repo.todos import PAGE

from .server import Service, bare_arguments, bare_config, bare_server, serve_bare

PAGE_LIMIT = 50  # authsvc's default for GET /todos


# --- the app ---


@dataclass(frozen=True)
class Config:
    database_url: str
    jwks: dict[str, Any]
    issuer: str = "authsvc"
    audience: str = "authsvc"
    leeway: int = 10
    idle_seconds: int = 7 * 86_400
    pool_min: int = 2
    pool_max: int = 10
    host: str = "127.0.0.1"
    port: int = 8081


POOL = web.AppKey("pool", asyncpg.Pool)
REQUIRED = ["sub", "iat", "exp", "iss", "aud", "jti", "sid"]


def create_app(config: Config) -> web.Application:
    keys = {k["kid"]: jwt.PyJWK.from_dict(k) for k in config.jwks["keys"]}
    idle = timedelta(seconds=config.idle_seconds)
    unauthorized = web.json_response({"error": "invalid_token"}, status=401)

    def claims_of(request: web.Request) -> dict[str, Any] | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        try:
            key = keys[jwt.get_unverified_header(token)["kid"]] if len(keys) > 1 else next(iter(keys.values()))
            return jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway,
                options={"require": REQUIRED},
            )
        except (jwt.PyJWTError, KeyError):
            return None

    def user_json(row: asyncpg.Record) -> dict[str, Any]:
        return {
            "id": row["id"],
            "email": row["email"],
            "first_name": row["first_name"],
            "last_name": row["last_name"],
            "created_at": row["created_at"].isoformat(),
            "updated_at": row["updated_at"].isoformat(),
        }

    def todo_json(row: asyncpg.Record) -> dict[str, Any]:
        return {
            "id": row["id"],
            "text": row["text"],
            "completed": row["completed"],
            "created_at": row["created_at"].isoformat(),
            "updated_at": row["updated_at"].isoformat(),
        }

    async def me(request: web.Request) -> web.Response:
        claims = claims_of(request)
        if claims is None:
            return unauthorized
        async with request.app[POOL].acquire() as conn:
            row = await conn.fetchrow(LIVE_USER, uuid.UUID(claims["sid"]), int(claims["sub"]), idle)
        if row is None:
            return unauthorized
        return web.json_response(user_json(row))

    async def list_todos(request: web.Request) -> web.Response:
        claims = claims_of(request)
        if claims is None:
            return unauthorized
        async with request.app[POOL].acquire() as conn:
            rows = await conn.fetch(PAGE, uuid.UUID(claims["sid"]), int(claims["sub"]), idle, None, 0, PAGE_LIMIT, 0)
        if not rows:
            return unauthorized
        return web.json_response([todo_json(r) for r in rows if r["id"] is not None])

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        app[POOL] = await asyncpg.create_pool(
            config.database_url,
            min_size=config.pool_min,
            max_size=config.pool_max,
            server_settings={"application_name": "authsvc-bench-reference"},
            reset=keep_session,  # as authsvc's pool: no reset round trip
        )
        yield
        await app[POOL].close()

    app = web.Application()
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/users/me", me)
    app.router.add_get("/todos", list_todos)
    app.router.add_get("/readyz", readyz)
    return app


@asynccontextmanager
async def reference(database_url: str, jwks: dict[str, Any], workers: int, **options: object) -> AsyncIterator[Service]:
    """Run the reference server in a subprocess until the block ends; yields once every worker listens.

    Options are the command line's without dashes: issuer, audience, leeway, idle_seconds,
    pool_min, pool_max.
    """
    args = ["--database-url", database_url]
    for name, value in options.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    async with bare_server(
        "bench.reference", args, workers=workers, files={"--jwks": json.dumps(jwks)}, database_url=database_url
    ) as service:
        yield service


def main() -> None:
    parser = bare_arguments(__doc__, 8081)
    parser.add_argument("--jwks", type=Path, required=True, help="a JWKS document (authsvc's /.well-known/jwks.json)")
    parser.add_argument("--issuer", default="authsvc")
    parser.add_argument("--audience", default="authsvc")
    parser.add_argument("--leeway", type=int, default=10, help="seconds, as AUTHSVC_TOKEN_LEEWAY")
    parser.add_argument("--idle-seconds", type=int, default=7 * 86_400, help="as AUTHSVC_SESSION_IDLE_TIMEOUT")
    args = parser.parse_args()
    config = Config(
        jwks=json.loads(args.jwks.read_text()),
        issuer=args.issuer,
        audience=args.audience,
        leeway=args.leeway,
        idle_seconds=args.idle_seconds,
        **bare_config(args),
    )
    serve_bare(create_app, config, args.workers)


if __name__ == "__main__":
    main()
