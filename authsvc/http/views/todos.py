from __future__ import annotations

import asyncpg
from aiohttp import web

from authsvc.appkeys import LIVE_SESSION, POOL
from authsvc.db.repo import todos
from authsvc.errors import NotFound
from authsvc.http.answers import json_response
from authsvc.http.bodies import read_json, read_query
from authsvc.http.middlewares import checks_session, requires
from authsvc.http.schemas import (
    TodoCreateSchema,
    TodoListQuery,
    TodoPatchSchema,
    TodoPutSchema,
)
from authsvc.http.views.common import path_id

routes = web.RouteTableDef()

create_schema = TodoCreateSchema()
put_schema = TodoPutSchema()
patch_schema = TodoPatchSchema()
list_query = TodoListQuery()


def _found(todo: asyncpg.Record | None) -> web.Response:
    if todo is None:
        raise NotFound("No such todo.")
    return json_response(todo)  # a row of todos.SHOWN: TodoSchema's fields, in its order


def next_link(last_id: int, limit: int, completed: bool | None) -> str:
    """RFC 8288 Link to the page after `last_id`, with the same limit and filter. A reference
    relative to this host, as Location is: a client resolves it against the request URL."""
    target = f"/todos?after={last_id}&limit={limit}"
    if completed is not None:
        target += "&completed=true" if completed else "&completed=false"
    return f'<{target}>; rel="next"'


@routes.get("/todos")
@requires("todos")
@checks_session
async def list_todos(request: web.Request) -> web.Response:
    query = read_query(request, list_query)
    limit, completed = query["limit"], query.get("completed")
    async with request.app[POOL].acquire() as conn:
        page = await todos.select_page(
            conn,
            request[LIVE_SESSION],
            limit=limit,
            after=query.get("after"),
            offset=query["offset"],
            completed=completed,
        )
    # A full page may have a next one (a short page is the last); an offset page's next one
    # is after its last id too, which moves the client onto the cheap cursor.
    headers = {"Link": next_link(page[-1]["id"], limit, completed)} if len(page) == limit else None
    return json_response(page, headers=headers)  # rows of todos.SHOWN: TodoSchema's fields, in its order


@routes.post("/todos")
@requires("todos")
@checks_session
async def create_todo(request: web.Request) -> web.Response:
    data = await read_json(request, create_schema)
    async with request.app[POOL].acquire() as conn:
        todo = await todos.insert(conn, request[LIVE_SESSION], data["text"], data["completed"])
    return json_response(todo, status=201, headers={"Location": f"/todos/{todo['id']}"})


@routes.get("/todos/{id}")
@requires("todos")
@checks_session
async def get_todo(request: web.Request) -> web.Response:
    todo_id = path_id(request, "todo")
    async with request.app[POOL].acquire() as conn:
        todo = await todos.select_shown(conn, request[LIVE_SESSION], todo_id)
    return _found(todo)


async def _update(request: web.Request, schema: TodoPatchSchema | TodoPutSchema) -> web.Response:
    todo_id = path_id(request, "todo")
    data = await read_json(request, schema)
    live = request[LIVE_SESSION]
    async with request.app[POOL].acquire() as conn:
        if not data:  # an empty PATCH changes nothing, not even updated_at
            return _found(await todos.select_shown(conn, live, todo_id))
        todo = await todos.update(conn, live, todo_id, data.get("text"), data.get("completed"))
    return _found(todo)


@routes.patch("/todos/{id}")
@requires("todos")
@checks_session
async def patch_todo(request: web.Request) -> web.Response:
    return await _update(request, patch_schema)


@routes.put("/todos/{id}")
@requires("todos")
@checks_session
async def put_todo(request: web.Request) -> web.Response:
    return await _update(request, put_schema)


@routes.delete("/todos/{id}")
@requires("todos")
@checks_session
async def delete_todo(request: web.Request) -> web.Response:
    todo_id = path_id(request, "todo")
    async with request.app[POOL].acquire() as conn:
        if not await todos.delete(conn, request[LIVE_SESSION], todo_id):
            raise NotFound("No such todo.")
    return web.Response(status=204)
