"""The tutorial-style reference of bench.perf: the service people write instead of running authsvc.

    python -m bench.tutorial --port 8082 --database-url URL --secret-file FILE [--workers N]
                             [--pool-min 2] [--pool-max 10]

What the aiohttp + asyncpg + PyJWT tutorials teach, and nothing else: the user id is the `sub`
of an HS256 JWT signed with a shared secret, decoded with PyJWT on every request; then one
query over an asyncpg pool; the answer by `web.json_response`. No middleware, no validation,
no session check (so a token stays good until it expires whatever happens to its session or
its account: the guarantee authsvc keeps and this app does not), no request id, no access
line. `GET /users/me` answers the user of the token, `GET /todos` that user's first 20 todos,
with the same fields authsvc answers (bench.perf checks that the documents are equal).

bench.perf makes the tokens with `token(secret, user_id)`. The pool has authsvc's size, the
event loop is uvloop where installed, and --workers N > 1 spawns N processes sharing the port,
as bench.reference does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import jwt
from aiohttp import web

from .server import bare_arguments, bare_config, serve_bare

TODOS_PER_PAGE = 20
ALGORITHM = "HS256"


def token(secret: str, user_id: int, ttl: int = 86_400) -> str:
    """An access token for this app, as a tutorial's login endpoint would issue it."""
    now = int(time.time())
    return jwt.encode({"sub": str(user_id), "iat": now, "exp": now + ttl}, secret, algorithm=ALGORITHM)


@dataclass(frozen=True)
class Config:
    database_url: str
    secret: str
    pool_min: int = 2
    pool_max: int = 10
    host: str = "127.0.0.1"
    port: int = 8082


POOL = web.AppKey("pool", asyncpg.Pool)
SECRET = web.AppKey("secret", str)


def current_user_id(request: web.Request) -> int | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    try:
        payload = jwt.decode(header[len("Bearer "):], request.app[SECRET], algorithms=[ALGORITHM])
        return int(payload["sub"])
    except (jwt.PyJWTError, KeyError, ValueError):
        return None


def unauthorized() -> web.Response:
    return web.json_response({"error": "unauthorized"}, status=401)


async def me(request: web.Request) -> web.Response:
    user_id = current_user_id(request)
    if user_id is None:
        return unauthorized()
    row = await request.app[POOL].fetchrow(
        "SELECT id, email, first_name, last_name, created_at, updated_at FROM users WHERE id = $1", user_id
    )
    if row is None:
        return unauthorized()
    user = dict(row)
    user["created_at"] = user["created_at"].isoformat()
    user["updated_at"] = user["updated_at"].isoformat()
    return web.json_response(user)


async def list_todos(request: web.Request) -> web.Response:
    user_id = current_user_id(request)
    if user_id is None:
        return unauthorized()
    rows = await request.app[POOL].fetch(
        "SELECT id, text, completed, created_at, updated_at FROM todos WHERE owner_id = $1 ORDER BY id LIMIT $2",
        user_id,
        TODOS_PER_PAGE,
    )
    todos = []
    for row in rows:
        todo = dict(row)
        todo["created_at"] = todo["created_at"].isoformat()
        todo["updated_at"] = todo["updated_at"].isoformat()
        todos.append(todo)
    return web.json_response(todos)


async def readyz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


def create_app(config: Config) -> web.Application:
    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        app[POOL] = await asyncpg.create_pool(
            config.database_url,
            min_size=config.pool_min,
            max_size=config.pool_max,
            server_settings={"application_name": "authsvc-bench-tutorial"},
        )
        yield
        await app[POOL].close()

    app = web.Application()
    app[SECRET] = config.secret
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/users/me", me)
    app.router.add_get("/todos", list_todos)
    app.router.add_get("/readyz", readyz)
    return app


def main() -> None:
    parser = bare_arguments(__doc__, 8082)
    parser.add_argument("--secret-file", type=Path, required=True, help="the shared HS256 secret")
    args = parser.parse_args()
    config = Config(secret=args.secret_file.read_text().strip(), **bare_config(args))
    serve_bare(create_app, config, args.workers)


if __name__ == "__main__":
    main()
