"""The pool hands connections out in the order they were asked for, within the acquire timeout."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from authsvc.db.pool import Database
from authsvc.settings import Settings


@pytest.fixture
async def one_connection(settings: Settings) -> AsyncIterator[Database]:
    db = Database(settings.replace(db_pool_min=1, db_pool_max=1, db_acquire_timeout=0.1))
    await db.open()
    yield db
    await db.close()


@pytest.fixture
async def three_connections(settings: Settings) -> AsyncIterator[Database]:
    db = Database(settings.replace(db_pool_min=3, db_pool_max=3))
    await db.open()
    yield db
    await db.close()


async def _take(db: Database, name: object, order: list[object]) -> None:
    async with db.acquire() as conn:
        order.append(name)
        await conn.execute("SELECT 1")  # held across a round trip, as a request holds it


async def test_waiters_get_the_connection_in_the_order_they_came_and_newcomers_queue(one_connection):
    order: list[object] = []
    held = one_connection.acquire()
    await held.__aenter__()
    waiters = [asyncio.create_task(_take(one_connection, n, order)) for n in range(5)]
    await asyncio.sleep(0)  # all five wait now
    await held.__aexit__(None, None, None)
    # Asked for right after the release, before the first waiter has run: it waits its turn
    # (the pool's own queue would give it the connection the first waiter was woken for).
    late = asyncio.create_task(_take(one_connection, "late", order))
    await asyncio.gather(*waiters, late)
    assert order == [0, 1, 2, 3, 4, "late"]


async def test_a_wait_past_the_acquire_timeout_gives_up_and_leaves_the_pool_whole(one_connection):
    held = one_connection.acquire()
    await held.__aenter__()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(5):  # the test's own bound: the pool's is 0.1 s
            async with one_connection.acquire():
                pass
    await held.__aexit__(None, None, None)
    order: list[object] = []
    await asyncio.gather(*(_take(one_connection, n, order) for n in range(3)))
    assert sorted(order) == [0, 1, 2]


async def test_under_load_every_connection_goes_to_the_longest_waiting(three_connections):
    """30 tasks asking again and again for three connections: each is served in the order it
    asked (a ticket taken just before asking, with nothing awaited in between), none overtaken.
    The pool's own queue lets one whose round trip just ended take a connection given back for
    another, woken but not yet run, which then waits again at the back."""
    tickets = itertools.count()
    served: list[int] = []

    async def client() -> None:
        for _ in range(10):
            ticket = next(tickets)
            async with three_connections.acquire() as conn:
                served.append(ticket)
                await conn.execute("SELECT 1")

    await asyncio.gather(*(client() for _ in range(30)))
    assert len(served) == 300
    overtaken = [(a, b) for a, b in zip(served, served[1:]) if b < a]
    assert not overtaken, overtaken[:5]
