"""No statement on a request path or in a housekeeping loop reads a whole table.

bench/explain.py runs every statement of authsvc/db/repo the way its callers do and EXPLAINs
each as the service runs it (prepared: the custom plan, and the generic one PostgreSQL moves
to after five runs). With sequential scans discouraged, the planner takes an index wherever
one can serve, however few rows the test tables hold: a sequential scan left in a plan means
that no index can, and on a table of millions that statement would read it all.
`python -m bench.scale --explain` shows the same plans on a large database.
"""

from __future__ import annotations

import inspect

import pytest
from helpers import bearer, login, signup

from authsvc.db import repo
from authsvc.db.repo import (
    api_keys,
    auth_events,
    clients,
    known_addresses,
    login_backoff,
    login_budgets,
    sessions,
    todos,
    users,
)
from bench import explain

EMAIL = "planned@example.com"
# Operator commands that may read a whole table: rare, and an index for them would cost
# every login a write (login_backoff.forget by address), or the whole table is what is asked
# for (clients.select_all: GET /admin/clients, `authsvc clients list`; clients are a handful,
# each registered by an operator).
WHOLE_TABLE_ALLOWED = {"login_backoff.forget (address)", "clients.select_all"}


@pytest.fixture
async def statements(client, db) -> list[explain.Statement]:
    await signup(client, EMAIL)
    token = await login(client, EMAIL)
    resp = await client.post("/todos", json={"text": "the sample todo"}, headers=bearer(token))
    assert resp.status == 201, await resp.text()
    return await explain.exercise(db, await explain.sample(db, EMAIL))


async def test_every_repo_function_is_planned(statements):
    """A statement added to a repo module must get its line in bench/explain.py's exercise."""
    planned = {s.function.split(" ")[0] for s in statements}
    modules = (
        api_keys, auth_events, clients, known_addresses, login_backoff, login_budgets, sessions, todos, users,
    )
    unplanned = {
        f"{module.__name__.rsplit('.', 1)[1]}.{name}"
        for module in modules
        for name, fn in vars(module).items()
        if inspect.iscoroutinefunction(fn) and fn.__module__ == module.__name__
    } - planned - {"auth_events.insert_many"}  # a COPY, which has no plan
    assert not unplanned


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
async def test_no_hot_statement_reads_a_whole_table(statements, db, generic):
    whole = {}
    for statement in statements:
        plan = await explain.plan(db, statement, generic=generic, no_seqscan=True)
        tables = [scan.table for scan in explain.scans(plan) if scan.whole_table]
        if tables and statement.function not in WHOLE_TABLE_ALLOWED:
            whole[statement.function] = (tables, " ".join(statement.sql.split()))
    assert not whole


async def test_each_prune_finds_its_rows_by_its_index(statements, db):
    """A prune reads its oldest rows by the index on the age it prunes by, nothing else."""
    expected = {
        "sessions.prune": "sessions_ended_at_idx",
        "clients.prune_assertions": "client_assertions_expires_at_idx",
        "login_backoff.prune": "login_backoff_updated_at_idx",
        "login_budgets.prune": "login_budgets_updated_at_idx",
        "known_addresses.prune": "login_known_addresses_last_success_at_idx",
        "auth_events.prune": "auth_events_at_idx",
    }
    prunes = {s.function: s for s in statements if s.path == "prune"}
    assert set(prunes) == set(expected)
    for function, index in expected.items():
        for generic in (False, True):
            plan = await explain.plan(db, prunes[function], generic=generic, no_seqscan=True)
            indexes = {scan.index for scan in explain.scans(plan) if scan.index}
            assert indexes == {index}, (function, generic, indexes)


async def test_the_prunes_are_recorded_not_run(statements, db):
    assert all(s.ms is None for s in statements if s.path == "prune")
    assert repo.PRUNE_BATCH in statements[-1].args  # the batch size is the statement's LIMIT
