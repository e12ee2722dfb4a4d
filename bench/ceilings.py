"""The ceilings of bench.perf: the most one bare aiohttp worker answers on this machine.

    python -m bench.ceilings --kind constant|select1 --port P --answers FILE
                             [--database-url URL] [--workers N] [--pool-min 2] [--pool-max 10]

The answers file maps each path to serve (bench.perf gives `/users/me` and `/todos`) to the
JSON text to answer, encoded once at start; bench.perf passes authsvc's own answers, so the
bytes on the wire are the same as authsvc's. The request, bearer header and all, is read and
otherwise ignored.

- constant: the answer and nothing else (no database, no token): what HTTP alone costs.
- select1: `select 1` over an asyncpg pool of authsvc's size first (an acquire, one round
  trip, asyncpg's reset on release), then the answer: the least any answer that needs the
  database can cost.

The event loop is uvloop where installed; --workers N > 1 spawns N processes sharing the port.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from aiohttp import web

from .server import bare_arguments, bare_config, serve_bare

KINDS = ("constant", "select1")


@dataclass(frozen=True)
class Config:
    kind: str
    answers: dict[str, str]  # path -> JSON text
    database_url: str | None = None
    pool_min: int = 2
    pool_max: int = 10
    host: str = "127.0.0.1"
    port: int = 8083


POOL = web.AppKey("pool", asyncpg.Pool)


def create_app(config: Config) -> web.Application:
    if config.kind not in KINDS:
        raise ValueError(f"kind: one of {', '.join(KINDS)}")
    app = web.Application()

    def answering(body: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def constant(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type="application/json", charset="utf-8")

        async def select1(request: web.Request) -> web.Response:
            async with request.app[POOL].acquire() as conn:
                await conn.fetchval("select 1")
            return web.Response(body=body, content_type="application/json", charset="utf-8")

        return constant if config.kind == "constant" else select1

    for path, text in config.answers.items():
        json.loads(text)  # JSON, or refuse to start
        app.router.add_get(path, answering(text.encode()))

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app.router.add_get("/readyz", readyz)

    if config.kind == "select1":
        if not config.database_url:
            raise ValueError("select1 needs a database URL")

        async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
            app[POOL] = await asyncpg.create_pool(
                config.database_url,
                min_size=config.pool_min,
                max_size=config.pool_max,
                server_settings={"application_name": "authsvc-bench-ceiling"},
            )
            yield
            await app[POOL].close()

        app.cleanup_ctx.append(pool_ctx)
    return app


def main() -> None:
    parser = bare_arguments(__doc__, 8083, database_help="needed by --kind select1")
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--answers", type=Path, required=True, help='JSON: {"/path": "<JSON text to answer>", ...}')
    args = parser.parse_args()
    if args.kind == "select1" and not args.database_url:
        parser.error("--kind select1 needs --database-url")
    answers = json.loads(args.answers.read_text())
    if not isinstance(answers, dict) or not all(isinstance(v, str) for v in answers.values()):
        parser.error('--answers: a JSON object of paths to JSON texts, {"/path": "..."}')
    config = Config(kind=args.kind, answers=answers, **bare_config(args))
    serve_bare(create_app, config, args.workers)


if __name__ == "__main__":
    main()
