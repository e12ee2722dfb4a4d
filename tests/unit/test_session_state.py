"""Pooled connections go back without asyncpg's reset query (db/pool.py keep_session): safe only
while no code outside the migrations, which use a connection of their own, leaves session state
on one. This keeps it so."""

from __future__ import annotations

import re
from pathlib import Path

import authsvc

ROOT = Path(authsvc.__file__).parent
# Statements that leave state on the session past their transaction.
SESSION_STATE = re.compile(
    r"pg_advisory_(?!xact_)\w*lock|(?-i:\bLISTEN\s+\w|\bDECLARE\s+\w+\s+CURSOR)|[\"']\s*SET\s+(SESSION\s+)?(?!LOCAL\b)[a-z_.]+\s*(=|\bTO\b)"
    r"|set_config\s*\(|CREATE\s+TEMP|\bPREPARE\s+\w",
    re.IGNORECASE,
)
OWN_CONNECTION = {ROOT / "db" / "migrate.py", ROOT / "db" / "pool.py"}  # pool.py only says so in a docstring


def test_no_pooled_statement_leaves_session_state():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if path in OWN_CONNECTION:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if SESSION_STATE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "session state on a pooled connection (see db/pool.py keep_session):\n" + "\n".join(found)


def test_the_check_sees_what_it_looks_for():
    for statement in ("SELECT pg_advisory_lock(1)", "LISTEN x", "'SET statement_timeout = 0'", '"SET search_path TO x"',
                      
                      "SELECT set_config('a', 'b', false)", "CREATE TEMP TABLE t ()", "DECLARE c CURSOR FOR SELECT 1"):
        assert SESSION_STATE.search(statement), statement
    for statement in ("UPDATE users SET email_key = $2", "SELECT pg_advisory_xact_lock(1)", "'SET LOCAL x = 1'", "LISTEN/NOTIFY: no extra"):
        assert not SESSION_STATE.search(statement), statement
