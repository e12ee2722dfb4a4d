"""Owner-scoped todos: CRUD, listing, validation, IDOR and hostile ids against the real service."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestClient
from helpers import bearer, login, signup

from authsvc.auth.ids import MAX_ID
from authsvc.db.repo import todos
from authsvc.db.repo.sessions import LiveSession
from authsvc.db.repo.todos import SHOWN
from authsvc.db.repo.users import User
from authsvc.http.schemas import (
    MAX_OFFSET,
    TodoSchema,
    UserSchema,
    user_json,
)

TODO_FIELDS = {"id", "text", "completed", "created_at", "updated_at"}


# --- helpers ---


async def create(client: TestClient, headers: dict[str, str], text: str = "buy milk", **fields: Any) -> dict[str, Any]:
    resp = await client.post("/todos", json={"text": text, **fields}, headers=headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def expect_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    """Assert the JSON error shape, status and code; return the body."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) <= {"error", "message", "details"}
    return body


async def fetch(database_url: str, query: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        return [dict(r) for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def db_todo(database_url: str, todo_id: int) -> dict[str, Any] | None:
    rows = await fetch(database_url, "SELECT * FROM todos WHERE id = $1", todo_id)
    return rows[0] if rows else None


async def db_todos(database_url: str) -> list[dict[str, Any]]:
    return await fetch(database_url, "SELECT * FROM todos ORDER BY id")


async def user_id(database_url: str, email: str) -> int:
    rows = await fetch(database_url, "SELECT id FROM users WHERE email = $1", email)
    return rows[0]["id"]


async def insert_many(database_url: str, owner_id: int, count: int) -> None:
    # Bulk rows straight into the real table: listing limits need more rows than is worth POSTing.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO todos (owner_id, text) SELECT $1, 'todo ' || g FROM generate_series(1, $2) g",
            owner_id,
            count,
        )
    finally:
        await conn.close()


def aware(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


@pytest.fixture
async def other(client: TestClient, auth: dict[str, str]) -> dict[str, str]:
    """Bearer headers of a second user (signed up after the owner)."""
    await signup(client, "other@example.com")
    return bearer(await login(client, "other@example.com"))


# --- create ---


async def test_create_returns_201_with_the_todo_and_location(client, auth, database_url):
    resp = await client.post("/todos", json={"text": "buy milk"}, headers=auth)
    assert resp.status == 201, await resp.text()
    todo = await resp.json()
    # The owner is implied by the token: the body neither needs nor shows it.
    assert set(todo) == TODO_FIELDS
    assert isinstance(todo["id"], int) and todo["id"] > 0
    assert todo["text"] == "buy milk"
    assert todo["completed"] is False
    assert aware(todo["updated_at"]) >= aware(todo["created_at"])
    assert resp.headers["Location"] == f"/todos/{todo['id']}"

    again = await client.get(resp.headers["Location"], headers=auth)
    assert again.status == 200
    assert await again.json() == todo

    row = await db_todo(database_url, todo["id"])
    assert row is not None
    assert row["owner_id"] == await user_id(database_url, "owner@example.com")
    assert (row["text"], row["completed"]) == ("buy milk", False)


async def test_create_accepts_completed_true(client, auth, database_url):
    todo = await create(client, auth, "done already", completed=True)
    assert todo["completed"] is True
    assert (await db_todo(database_url, todo["id"]))["completed"] is True


async def test_create_accepts_text_of_exactly_1000_characters(client, auth):
    todo = await create(client, auth, "x" * 1000)
    assert todo["text"] == "x" * 1000


async def test_unicode_text_is_stored_verbatim(client, auth, database_url):
    text = "café ☕ 🎉 日本語 \t tabs  and  spaces "
    todo = await create(client, auth, text)
    assert todo["text"] == text
    assert (await db_todo(database_url, todo["id"]))["text"] == text


# --- read and list ---


async def test_get_returns_own_todo(client, auth):
    todo = await create(client, auth)
    resp = await client.get(f"/todos/{todo['id']}", headers=auth)
    assert resp.status == 200
    assert await resp.json() == todo


async def test_list_is_a_json_array_of_own_todos_ordered_by_id(client, auth):
    created = [await create(client, auth, f"todo {i}") for i in range(4)]
    # Touching an early todo must not move it: the order is by id, not by update time.
    resp = await client.patch(f"/todos/{created[0]['id']}", json={"completed": True}, headers=auth)
    assert resp.status == 200
    resp = await client.get("/todos", headers=auth)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    listed = await resp.json()
    assert isinstance(listed, list)
    assert [t["id"] for t in listed] == [t["id"] for t in created]
    assert all(set(t) == TODO_FIELDS for t in listed)


async def test_list_is_empty_array_when_there_are_none(client, auth):
    resp = await client.get("/todos", headers=auth)
    assert resp.status == 200
    assert await resp.json() == []


async def test_list_limit_defaults_to_50(client, auth):
    created = [await create(client, auth, f"todo {i}") for i in range(55)]
    resp = await client.get("/todos", headers=auth)
    assert resp.status == 200
    assert [t["id"] for t in await resp.json()] == [t["id"] for t in created[:50]]


async def test_list_limit_allows_at_most_200(client, auth, database_url):
    await insert_many(database_url, await user_id(database_url, "owner@example.com"), 205)
    resp = await client.get("/todos?limit=200", headers=auth)
    assert resp.status == 200
    assert len(await resp.json()) == 200


async def test_list_limit_and_offset_page_through(client, auth):
    ids = [(await create(client, auth, f"todo {i}"))["id"] for i in range(5)]
    pages = []
    for offset in (0, 2, 4, 6):
        resp = await client.get(f"/todos?limit=2&offset={offset}", headers=auth)
        assert resp.status == 200
        pages.append([t["id"] for t in await resp.json()])
    assert pages == [ids[0:2], ids[2:4], ids[4:5], []]


async def test_list_filters_by_completed(client, auth):
    done = [(await create(client, auth, f"done {i}", completed=True))["id"] for i in range(2)]
    open_ = [(await create(client, auth, f"open {i}"))["id"] for i in range(3)]
    resp = await client.get("/todos?completed=true", headers=auth)
    assert resp.status == 200
    assert [t["id"] for t in await resp.json()] == done
    resp = await client.get("/todos?completed=false", headers=auth)
    assert resp.status == 200
    assert [t["id"] for t in await resp.json()] == open_


async def test_list_filter_combines_with_limit_and_offset(client, auth):
    done = []
    for i in range(6):
        todo = await create(client, auth, f"todo {i}", completed=i % 2 == 0)
        if todo["completed"]:
            done.append(todo["id"])
    resp = await client.get("/todos?completed=true&limit=1&offset=1", headers=auth)
    assert resp.status == 200
    assert [t["id"] for t in await resp.json()] == done[1:2]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=201", "limit"),
        ("limit=0", "limit"),
        ("limit=-5", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("limit=", "limit"),
        ("limit=99999999999999999999", "limit"),
        ("offset=-1", "offset"),
        ("offset=abc", "offset"),
        # Far past bigint: refused, not passed on to PostgreSQL to overflow into a 500.
        ("offset=99999999999999999999", "offset"),
        ("completed=yes", "completed"),
        ("completed=1", "completed"),
        ("completed=", "completed"),
        ("completed=%27%3B%20DROP%20TABLE%20todos%3B%20--", "completed"),
        ("sort=id", "sort"),
        ("owner_id=1", "owner_id"),
        ("limit=1&limit=2", "limit"),
        ("completed=true&completed=false", "completed"),
    ],
)
async def test_list_refuses_bad_query_parameters(client, auth, query, field):
    await create(client, auth)
    body = await expect_error(await client.get(f"/todos?{query}", headers=auth), 422, "validation_failed")
    # Per-field messages name the parameter at fault.
    assert field in body["details"]


# --- pages by cursor: ?after=<id> and the Link header ---


async def insert_todos(database_url: str, owner_id: int, count: int, completed_every: int = 3) -> list[int]:
    """`count` todos, every `completed_every`-th one completed; their ids in order."""
    rows = await fetch(
        database_url,
        "INSERT INTO todos (owner_id, text, completed)"
        " SELECT $1, 'todo ' || g, g % $3 = 0 FROM generate_series(1, $2) g RETURNING id",
        owner_id,
        count,
        completed_every,
    )
    return sorted(r["id"] for r in rows)


async def walk(client: TestClient, headers: dict[str, str], start: str, between: Any = None) -> list[list[int]]:
    """Every page from `start` on, following each rel="next" Link until a page has none.
    `between(page_number)` runs after each page, before the next is asked for."""
    pages: list[list[int]] = []
    url: str | None = start
    while url is not None:
        assert len(pages) < 100, "the Link headers never end"
        resp = await client.get(url, headers=headers)
        assert resp.status == 200, await resp.text()
        pages.append([t["id"] for t in await resp.json()])
        url = next_url(resp)
        if between is not None:
            await between(len(pages))
    return pages


def next_url(resp: Any) -> str | None:
    """The rel="next" target as aiohttp resolves it against the request URL, as a path for the
    test client (which refuses absolute URLs)."""
    nxt = resp.links.get("next")
    return None if nxt is None else nxt["url"].path_qs


def expected_link(after: int, limit: int, completed: str | None = None) -> str:
    query = f"after={after}&limit={limit}" + (f"&completed={completed}" if completed else "")
    return f'</todos?{query}>; rel="next"'


@pytest.mark.parametrize("completed", [None, "true", "false"])
async def test_walking_the_links_gives_every_todo_once_in_order(client, auth, database_url, completed):
    owner = await user_id(database_url, "owner@example.com")
    await insert_todos(database_url, owner, 23)
    want = [
        r["id"]
        for r in await db_todos(database_url)
        if completed is None or r["completed"] == (completed == "true")
    ]
    start = "/todos?limit=4" + (f"&completed={completed}" if completed else "")
    pages = await walk(client, auth, start)
    assert [i for page in pages for i in page] == want
    # Full pages until the last, which is short (or empty, when the count divides evenly).
    assert all(len(page) == 4 for page in pages[:-1]) and len(pages[-1]) < 4
    assert len(pages) == len(want) // 4 + 1


async def test_the_link_names_the_last_id_the_limit_and_the_filter(client, auth, database_url):
    owner = await user_id(database_url, "owner@example.com")
    ids = await insert_todos(database_url, owner, 9, completed_every=1)  # all completed
    resp = await client.get("/todos?completed=true&limit=4", headers=auth)
    assert resp.status == 200
    # One Link, relative to the request URL (RFC 8288 3.1: resolved as RFC 3986 says).
    assert resp.headers.getall("Link") == [expected_link(ids[3], 4, "true")]
    resp = await client.get(f"/todos?after={ids[3]}&completed=true&limit=4", headers=auth)
    assert [t["id"] for t in await resp.json()] == ids[4:8]
    assert resp.headers["Link"] == expected_link(ids[7], 4, "true")
    # The default limit is named too, and a page that is not full has no Link.
    resp = await client.get("/todos?completed=false", headers=auth)
    assert await resp.json() == [] and "Link" not in resp.headers
    resp = await client.get(f"/todos?after={ids[7]}", headers=auth)
    assert [t["id"] for t in await resp.json()] == ids[8:]
    assert "Link" not in resp.headers


async def test_a_full_default_page_links_to_the_next(client, auth, database_url):
    owner = await user_id(database_url, "owner@example.com")
    ids = await insert_todos(database_url, owner, 60)
    resp = await client.get("/todos", headers=auth)
    assert [t["id"] for t in await resp.json()] == ids[:50]
    assert resp.headers["Link"] == expected_link(ids[49], 50)
    resp = await client.get(next_url(resp), headers=auth)
    assert [t["id"] for t in await resp.json()] == ids[50:]
    assert "Link" not in resp.headers


async def test_an_offset_page_links_on_by_cursor(client, auth, database_url):
    owner = await user_id(database_url, "owner@example.com")
    ids = await insert_todos(database_url, owner, 10)
    resp = await client.get("/todos?limit=3&offset=3", headers=auth)
    assert [t["id"] for t in await resp.json()] == ids[3:6]
    # The next page is after this one's last id: the client moves onto the cheap cursor.
    assert resp.headers["Link"] == expected_link(ids[5], 3)
    pages = await walk(client, auth, next_url(resp))
    assert [i for page in pages for i in page] == ids[6:]


async def test_pages_stay_whole_while_todos_come_and_go(client, auth, database_url):
    """Keyset's point: todos added or deleted between pages neither repeat nor hide the others."""
    ids = [(await create(client, auth, f"todo {i}"))["id"] for i in range(10)]
    added: list[int] = []

    async def meanwhile(page: int) -> None:
        if page == 1:
            # One already seen and one not yet seen go; two come.
            for todo_id in (ids[1], ids[7]):
                assert (await client.delete(f"/todos/{todo_id}", headers=auth)).status == 204
            added.extend([(await create(client, auth, f"new {i}"))["id"] for i in range(2)])
        if page == 2:
            added.append((await create(client, auth, "newer"))["id"])

    pages = await walk(client, auth, "/todos?limit=3", meanwhile)
    seen = [i for page in pages for i in page]
    assert seen == sorted(set(seen)), "a todo came twice or out of order"
    # Every todo that was there all along, once; the deleted unseen one not; the new ones last.
    expected = [i for i in ids if i != ids[7]] + added
    assert seen == expected

    # The same walk by offset, for contrast: deleting a todo of page 1 shifts the rest
    # forward by one, and the first of page 2 is never shown.
    for todo_id in await _all_ids(client, auth):
        assert (await client.delete(f"/todos/{todo_id}", headers=auth)).status == 204
    ids = [(await create(client, auth, f"todo {i}"))["id"] for i in range(6)]
    first = [t["id"] for t in await (await client.get("/todos?limit=3&offset=0", headers=auth)).json()]
    assert (await client.delete(f"/todos/{ids[0]}", headers=auth)).status == 204
    second = [t["id"] for t in await (await client.get("/todos?limit=3&offset=3", headers=auth)).json()]
    assert ids[3] not in first + second
    by_cursor = await (await client.get(f"/todos?limit=3&after={first[-1]}", headers=auth)).json()
    assert [t["id"] for t in by_cursor] == ids[3:6]


async def _all_ids(client: TestClient, headers: dict[str, str]) -> list[int]:
    return [i for page in await walk(client, headers, "/todos?limit=200") for i in page]


async def test_another_users_id_as_cursor_shows_nothing_of_theirs(client, auth, other, database_url):
    mine, theirs = [], []
    for i in range(4):  # interleaved ids: mine, theirs, mine, theirs, ...
        mine.append((await create(client, auth, f"mine {i}"))["id"])
        theirs.append((await create(client, other, f"theirs {i}", completed=True))["id"])

    async def page(after: int, headers: dict[str, str] = auth, extra: str = "") -> tuple[list[int], str | None]:
        resp = await client.get(f"/todos?after={after}&limit=2{extra}", headers=headers)
        assert resp.status == 200, await resp.text()
        return [t["id"] for t in await resp.json()], resp.headers.get("Link")

    answers = {}
    for their_id in theirs:
        ids, link = await page(their_id)
        # Only my todos past that id: the cursor is a position in id order, not a lookup.
        assert ids == [i for i in mine if i > their_id][:2]
        assert link == (expected_link(ids[-1], 2) if len(ids) == 2 else None)
        assert (await page(their_id, extra="&completed=true")) == ([], None)
        answers[their_id] = (ids, link)
    # Their todos gone, the same answers: nothing tells "exists but not yours" from "missing".
    for their_id in theirs:
        assert (await client.delete(f"/todos/{their_id}", headers=other)).status == 204
    for their_id in theirs:
        assert await page(their_id) == answers[their_id]
    # And they, given my ids, see none of mine.
    assert await page(mine[0], other) == ([], None)


async def test_cursor_bounds(client, auth, database_url):
    owner = await user_id(database_url, "owner@example.com")
    ids = await insert_todos(database_url, owner, 3)
    for after, expected in (("0", ids), ("000", ids), (str(ids[0]), ids[1:]), (str(MAX_ID), [])):
        resp = await client.get(f"/todos?after={after}", headers=auth)
        assert resp.status == 200, (after, await resp.text())
        assert [t["id"] for t in await resp.json()] == expected


BAD_CURSORS = [
    "abc",
    "-1",
    "1.5",
    "",
    "+1",
    "%201",
    "1e3",
    "0x10",
    "١٢",  # Arabic-Indic digits
    "1%00",
    "1;%20DROP%20TABLE%20todos",
    str(MAX_ID + 1),  # one past bigint: refused here, never an overflow in PostgreSQL
    "99999999999999999999",
    "9" * 40,
    "null",
    "1&after=2",
]


@pytest.mark.parametrize("after", BAD_CURSORS)
async def test_bad_cursors_are_refused_by_name(client, auth, database_url, after):
    await create(client, auth)
    before = await db_todos(database_url)
    resp = await client.get(f"/todos?after={after}", headers=auth)
    body = await expect_error(resp, 422, "validation_failed")
    assert list(body["details"]) == ["after"], body
    assert await db_todos(database_url) == before


@pytest.mark.parametrize("query", ["after=1&offset=0", "offset=5&after=1", "after=0&offset=3&limit=2"])
async def test_after_and_offset_together_are_refused(client, auth, query):
    await create(client, auth)
    body = await expect_error(await client.get(f"/todos?{query}", headers=auth), 422, "validation_failed")
    assert set(body["details"]) == {"after", "offset"}
    assert all("not both" in m for ms in body["details"].values() for m in ms)


async def test_offset_is_capped_and_the_refusal_points_to_after(client, auth):
    await create(client, auth)
    resp = await client.get(f"/todos?offset={MAX_OFFSET}", headers=auth)
    assert resp.status == 200 and await resp.json() == []
    for offset in (MAX_OFFSET + 1, 10**9):
        body = await expect_error(await client.get(f"/todos?offset={offset}", headers=auth), 422, "validation_failed")
        assert list(body["details"]) == ["offset"]
        assert str(MAX_OFFSET) in body["details"]["offset"][0] and "after" in body["details"]["offset"][0]


class Recording:
    """A connection that keeps the statements a repo function sends through it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        self.sent.append((query, args))
        return await self.conn.fetch(query, *args)


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in _plan_nodes(child))]


def _literal(value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return f"'{value}'"
    if isinstance(value, timedelta):
        return f"'{value.total_seconds()} seconds'"
    return "NULL" if value is None else str(value).lower() if isinstance(value, bool) else str(int(value))


def _page_subtree(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The Limit node over the todos scan: the page itself, under the session check's join
    (and the sort of its at most `limit` rows, by id, for the answer's order)."""
    limits = [n for n in nodes if n["Node Type"] == "Limit" and any(
        c.get("Relation Name") == "todos" for c in _plan_nodes(n))]
    assert len(limits) == 1, nodes
    return limits[0]


async def test_every_page_is_one_short_range_of_the_owner_index(client, auth, other, database_url, settings):
    """EXPLAIN of the very statement select_page sends, on a table where the owner's todos come
    first and last with everyone else's between (as an account used, left and came back):
    for each completed filter, at the first page, across the gap and at the end, both in the
    plan for those values and in the generic plan a prepared statement settles on, the rows
    come in order from todos_owner_id_idx, scanned from the cursor on, and a page reads a
    handful of blocks. Written as `owner_id = $1 AND id > $3`, the generic plan walks the
    primary key from the cursor through all of the other users' todos: some 300 blocks for
    the page across the gap, where this reads at most 6."""
    owner = await user_id(database_url, "owner@example.com")
    them = await user_id(database_url, "other@example.com")
    early = await insert_todos(database_url, owner, 400)
    await insert_todos(database_url, them, 24_000)
    late = await insert_todos(database_url, owner, 400)
    claims = jwt.decode(auth["Authorization"].split()[1], options={"verify_signature": False})
    live = LiveSession(uuid.UUID(claims["sid"]), owner, timedelta(seconds=settings.session_idle_timeout))
    owned = {*early, *late}
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("ANALYZE todos")
        for completed in (None, True, False):
            for after in (0, early[-10], late[-1]):
                recording = Recording(conn)
                page = await todos.select_page(recording, live, limit=50, after=after, completed=completed)
                assert all(t["id"] in owned and t["id"] > after for t in page)
                ((sql, args),) = recording.sent
                custom = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
                await conn.execute(f"PREPARE page AS {sql}")
                await conn.execute("SET plan_cache_mode = force_generic_plan")
                execute = f"EXECUTE page({', '.join(map(_literal, args))})"
                generic = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {execute}")
                await conn.execute("RESET plan_cache_mode; DEALLOCATE page")
                for kind, plan in (("custom", custom), ("generic", generic)):
                    nodes = _plan_nodes(json.loads(plan)[0]["Plan"])
                    where = (completed, after, kind)
                    page_nodes = _plan_nodes(_page_subtree(nodes))
                    scans = [n for n in nodes if "Scan" in n["Node Type"] and n.get("Relation Name") == "todos"]
                    assert [(n["Node Type"], n.get("Index Name")) for n in scans] == [
                        ("Index Scan", "todos_owner_id_idx")
                    ], (where, nodes)
                    assert not [n for n in page_nodes if n["Node Type"] == "Sort"], where
                    blocks = page_nodes[0]["Shared Hit Blocks"] + page_nodes[0]["Shared Read Blocks"]
                    assert blocks <= 12, (where, blocks)
    finally:
        await conn.close()


# --- update ---


async def test_patch_text_only_keeps_completed(client, auth, database_url):
    todo = await create(client, auth, "old", completed=True)
    resp = await client.patch(f"/todos/{todo['id']}", json={"text": "new"}, headers=auth)
    assert resp.status == 200, await resp.text()
    changed = await resp.json()
    assert (changed["id"], changed["text"], changed["completed"]) == (todo["id"], "new", True)
    assert changed["created_at"] == todo["created_at"]
    assert aware(changed["updated_at"]) >= aware(todo["updated_at"])
    row = await db_todo(database_url, todo["id"])
    assert (row["text"], row["completed"]) == ("new", True)


async def test_patch_completed_only_keeps_text(client, auth, database_url):
    todo = await create(client, auth, "keep me")
    resp = await client.patch(f"/todos/{todo['id']}", json={"completed": True}, headers=auth)
    assert resp.status == 200, await resp.text()
    changed = await resp.json()
    assert (changed["text"], changed["completed"]) == ("keep me", True)
    row = await db_todo(database_url, todo["id"])
    assert (row["text"], row["completed"]) == ("keep me", True)


async def test_patch_can_set_completed_back_to_false(client, auth, database_url):
    # false must be applied, not mistaken for "not given".
    todo = await create(client, auth, completed=True)
    resp = await client.patch(f"/todos/{todo['id']}", json={"completed": False}, headers=auth)
    assert resp.status == 200
    assert (await resp.json())["completed"] is False
    assert (await db_todo(database_url, todo["id"]))["completed"] is False


async def test_patch_with_empty_object_changes_nothing(client, auth, database_url):
    todo = await create(client, auth, "as is", completed=True)
    before = await db_todo(database_url, todo["id"])
    resp = await client.patch(f"/todos/{todo['id']}", json={}, headers=auth)
    assert resp.status == 200, await resp.text()
    same = await resp.json()
    assert {k: same[k] for k in ("id", "text", "completed", "created_at")} == {
        k: todo[k] for k in ("id", "text", "completed", "created_at")
    }
    after = await db_todo(database_url, todo["id"])
    keep = ("id", "owner_id", "text", "completed", "created_at")
    assert {k: after[k] for k in keep} == {k: before[k] for k in keep}


async def test_put_replaces_both_fields(client, auth, database_url):
    todo = await create(client, auth, "old")
    resp = await client.put(f"/todos/{todo['id']}", json={"text": "new", "completed": True}, headers=auth)
    assert resp.status == 200, await resp.text()
    replaced = await resp.json()
    assert set(replaced) == TODO_FIELDS
    assert (replaced["id"], replaced["text"], replaced["completed"]) == (todo["id"], "new", True)
    assert replaced["created_at"] == todo["created_at"]
    row = await db_todo(database_url, todo["id"])
    assert (row["text"], row["completed"]) == ("new", True)


@pytest.mark.parametrize(
    ("body", "missing"),
    [({"text": "new"}, "completed"), ({"completed": True}, "text"), ({}, "text")],
)
async def test_put_needs_both_fields_and_changes_nothing_without_them(client, auth, database_url, body, missing):
    todo = await create(client, auth, "old")
    before = await db_todo(database_url, todo["id"])
    resp = await client.put(f"/todos/{todo['id']}", json=body, headers=auth)
    assert missing in (await expect_error(resp, 422, "validation_failed"))["details"]
    assert await db_todo(database_url, todo["id"]) == before


# --- delete ---


async def test_delete_answers_204_then_the_todo_is_gone(client, auth, database_url):
    todo = await create(client, auth)
    keep = await create(client, auth, "keep")
    resp = await client.delete(f"/todos/{todo['id']}", headers=auth)
    assert resp.status == 204
    assert await resp.read() == b""
    assert await db_todo(database_url, todo["id"]) is None
    await expect_error(await client.get(f"/todos/{todo['id']}", headers=auth), 404, "not_found")
    await expect_error(await client.delete(f"/todos/{todo['id']}", headers=auth), 404, "not_found")
    # Only the named todo went.
    assert await db_todo(database_url, keep["id"]) is not None


# --- fields a client may not set, wrong types ---

FORBIDDEN = [
    ("id", 424242),
    ("owner_id", 1),
    ("created_at", "2000-01-01T00:00:00+00:00"),
    ("updated_at", "2000-01-01T00:00:00+00:00"),
]


@pytest.mark.parametrize(("field", "value"), FORBIDDEN)
async def test_create_refuses_fields_a_client_may_not_set(client, auth, other, database_url, field, value):
    # owner_id names the other user: a todo must never be planted in someone else's list.
    value = await user_id(database_url, "other@example.com") if field == "owner_id" else value
    resp = await client.post("/todos", json={"text": "sneaky", field: value}, headers=auth)
    assert field in (await expect_error(resp, 422, "validation_failed"))["details"]
    assert await db_todos(database_url) == []


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
@pytest.mark.parametrize(("field", "value"), FORBIDDEN)
async def test_update_refuses_fields_a_client_may_not_set(client, auth, other, database_url, method, field, value):
    todo = await create(client, auth, "mine")
    value = await user_id(database_url, "other@example.com") if field == "owner_id" else value
    before = await db_todos(database_url)
    body = {"text": "changed", "completed": True, field: value}
    resp = await client.request(method, f"/todos/{todo['id']}", json=body, headers=auth)
    assert field in (await expect_error(resp, 422, "validation_failed"))["details"]
    # Nothing moved: not the text, not the owner, not the id, not the timestamps.
    assert await db_todos(database_url) == before


BAD_VALUES = [
    ("text", 123),
    ("text", None),
    ("text", ["a"]),
    ("text", {"a": 1}),
    ("text", ""),
    ("text", "x" * 1001),
    ("text", "a\x00b"),
    ("completed", "true"),
    ("completed", 1),
    ("completed", 0),
    ("completed", None),
    ("completed", "false"),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
async def test_create_refuses_wrong_types_and_lengths(client, auth, database_url, field, value):
    body = {"text": "fine", field: value}
    resp = await client.post("/todos", json=body, headers=auth)
    assert field in (await expect_error(resp, 422, "validation_failed"))["details"]
    assert await db_todos(database_url) == []


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
async def test_update_refuses_wrong_types_and_lengths(client, auth, database_url, method, field, value):
    todo = await create(client, auth, "fine")
    before = await db_todo(database_url, todo["id"])
    body = {"text": "changed", "completed": True, field: value}
    resp = await client.request(method, f"/todos/{todo['id']}", json=body, headers=auth)
    assert field in (await expect_error(resp, 422, "validation_failed"))["details"]
    assert await db_todo(database_url, todo["id"]) == before


@pytest.mark.parametrize("raw", ['[{"text": "a"}]', '"text"', "1", "null", "true"])
async def test_create_refuses_a_body_that_is_not_an_object(client, auth, database_url, raw):
    headers = {**auth, "Content-Type": "application/json"}
    resp = await client.post("/todos", data=raw, headers=headers)
    await expect_error(resp, 422, "validation_failed")
    assert await db_todos(database_url) == []


# --- IDOR: another user's todo is exactly a missing one ---


async def _missing_answer(client: TestClient, headers: dict[str, str], method: str, todo_id: int) -> tuple[int, Any]:
    body = {"text": "mine now", "completed": True} if method in ("PATCH", "PUT") else None
    resp = await client.request(method, f"/todos/{todo_id}", json=body, headers=headers)
    return resp.status, await resp.json()


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
async def test_another_users_todo_is_exactly_a_missing_one(client, auth, other, database_url, method):
    todo = await create(client, auth, "private")
    before = await db_todo(database_url, todo["id"])
    missing_id = todo["id"] + 1000

    foreign = await _missing_answer(client, other, method, todo["id"])
    missing = await _missing_answer(client, other, method, missing_id)
    assert foreign[0] == 404
    assert foreign[1]["error"] == "not_found"
    # Same status and same body: nothing tells "exists but not yours" from "does not exist".
    assert foreign == missing
    assert await db_todo(database_url, todo["id"]) == before

    # The owner still sees it as it was.
    resp = await client.get(f"/todos/{todo['id']}", headers=auth)
    assert resp.status == 200
    assert await resp.json() == todo


async def test_list_shows_only_the_callers_own_todos(client, auth, other):
    mine = [(await create(client, auth, f"mine {i}"))["id"] for i in range(3)]
    theirs = [(await create(client, other, f"theirs {i}"))["id"] for i in range(2)]
    for headers, expected in ((auth, mine), (other, theirs)):
        for query in ("", "?completed=false", "?limit=200", "?offset=0"):
            resp = await client.get(f"/todos{query}", headers=headers)
            assert resp.status == 200
            assert [t["id"] for t in await resp.json()] == expected


async def test_todos_created_with_another_users_token_belong_to_that_user(client, auth, other, database_url):
    todo = await create(client, other, "theirs")
    row = await db_todo(database_url, todo["id"])
    assert row["owner_id"] == await user_id(database_url, "other@example.com")
    await expect_error(await client.get(f"/todos/{todo['id']}", headers=auth), 404, "not_found")


# --- ids that name no todo ---

BAD_IDS = [
    "abc",
    "-1",
    "0",
    "00",
    "99999999999999999999",
    "١٢",  # Arabic-Indic digits: str.isdigit() says yes, but they name no id
    "9223372036854775807",  # bigint max: a valid id that does not exist
    "9223372036854775808",  # bigint max + 1: must not overflow into a 500
    "1.0",
    "1e3",
    "+1",
    " 1",
    "1 OR 1=1",
    "1; DROP TABLE todos; --",
    "%00",
    "%20",
    "%ff",
    "1.5",
    "\u0661",  # one Arabic-Indic digit
    "9" * 40,
]


@pytest.mark.parametrize("raw_id", BAD_IDS)
async def test_ids_that_name_no_todo_are_404_for_every_method(client, auth, database_url, raw_id):
    todo = await create(client, auth)
    before = await db_todos(database_url)
    _, reference = await _missing_answer(client, auth, "GET", todo["id"] + 1000)
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        # A body on every method: even one a GET or DELETE should not have changes no answer.
        body = {"text": "x", "completed": True}
        resp = await client.request(method, f"/todos/{raw_id}", json=body, headers=auth)
        answer = await expect_error(resp, 404, "not_found")
        assert answer == reference, (method, raw_id)
    assert await db_todos(database_url) == before


# --- without a token ---

# "{id}" stands for a todo that exists, so a 401 cannot be a 404 in disguise.
ROUTES = [
    ("GET", "/todos"),
    ("POST", "/todos"),
    ("GET", "/todos/{id}"),
    ("PATCH", "/todos/{id}"),
    ("PUT", "/todos/{id}"),
    ("DELETE", "/todos/{id}"),
    ("GET", "/todos/abc"),
    ("DELETE", "/todos/99999999999999999999"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_todos_routes_need_a_token(client, auth, database_url, method, path):
    todo = await create(client, auth, "guarded")
    before = await db_todos(database_url)
    body = {"text": "x", "completed": True} if method in ("POST", "PATCH", "PUT") else None
    resp = await client.request(method, path.format(id=todo["id"]), json=body)
    await expect_error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="authsvc"'
    assert await db_todos(database_url) == before


def test_hand_built_answers_match_the_documented_schemas():
    """views build JSON by hand for speed (a todo is its row of todos.SHOWN, encoded as it
    comes); it must stay exactly what the schemas describe (tests/api/test_answers.py holds the
    bytes of real answers to them)."""
    now = datetime.now(UTC)
    assert [c.strip() for c in SHOWN.split(",")] == list(TodoSchema().fields)
    user = User(3, "a@example.com", "$2b$hash", None, "Ł", now, now)
    assert user_json(user) == UserSchema().dump(user)
