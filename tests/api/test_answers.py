"""Answers are exactly what the schemas behind the OpenAPI document say, byte for byte.

The routes encode rows straight to JSON (orjson, no object per field); here the same rows,
read back from the database, go through the marshmallow schemas and the standard library's
encoder, and the bytes must be equal."""

from __future__ import annotations

import json
from typing import Any

from helpers import bearer, login, signup

from authsvc.http.schemas import TodoSchema, UserSchema

EMAIL = "answers@example.com"


def canonical(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


async def test_user_and_todo_answers_are_the_schemas_dump_of_their_rows(client, db):
    await signup(client, EMAIL, first_name="Zoë", last_name=None)
    headers = bearer(await login(client, EMAIL))
    texts = ["plain", "ünïcödé ✓ and \u2028 a line separator", 'quotes " and \\ backslash', "tab\tand\nnewline"]
    for text in texts:
        resp = await client.post("/todos", json={"text": text}, headers=headers)
        assert resp.status == 201
    # A whole second (isoformat drops the microseconds) and an offset of the server's own.
    await db.execute("UPDATE todos SET created_at = date_trunc('second', created_at) WHERE text = 'plain'")
    await db.execute("UPDATE todos SET completed = true WHERE text LIKE 'quotes%'")

    user = await db.fetchrow("SELECT * FROM users WHERE email = $1", EMAIL)
    todos = await db.fetch("SELECT * FROM todos WHERE owner_id = $1 ORDER BY id", user["id"])
    answers = {
        "/users/me": UserSchema().dump(user),
        "/todos": TodoSchema(many=True).dump(todos),
        "/todos?completed=true": TodoSchema(many=True).dump([t for t in todos if t["completed"]]),
        f"/todos/{todos[0]['id']}": TodoSchema().dump(todos[0]),
    }
    for path, expected in answers.items():
        resp = await client.get(path, headers=headers)
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await resp.read() == canonical(expected), path
