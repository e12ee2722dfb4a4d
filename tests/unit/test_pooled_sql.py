"""Nothing session-level on pooled connections: behind PgBouncer in transaction mode each
transaction (each statement outside one) may run on another server connection, so a SET, a
session advisory lock, a LISTEN, a temporary table, a held cursor or a named prepared
statement would stay behind on one server connection, for whichever client gets it next.

An AST walk over the package (nothing is imported): every string that reads as SQL, and
every call of a connection method that keeps state on the server. The modules that run on
the migrations' direct connection (AUTHSVC_MIGRATE_DATABASE_URL) may; no other may.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "authsvc"
# On the direct connection only: the migrations, their Python steps, the embedded set-up.
DIRECT = {"db/migrate.py", "db/email_backfill.py", "db/embedded.py"}

# A string is taken as SQL when it starts with one of these, upper case as the code writes SQL.
SQL_START = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|SET|RESET|LISTEN|UNLISTEN|DECLARE|CREATE|DROP|ALTER|PREPARE"
    r"|DEALLOCATE|DISCARD|LOCK|BEGIN|COMMIT|TRUNCATE|COPY|DO|VALUES)\b"
)
# What would outlive its transaction, statement by statement.
SESSION_LEVEL = {
    "SET or RESET outside a transaction's SET LOCAL": re.compile(r"^\s*(SET\s+(SESSION\s+)?(?!LOCAL\b)\w|RESET\b)"),
    "LISTEN": re.compile(r"^\s*(UN)?LISTEN\b"),
    "a named prepared statement": re.compile(r"^\s*(PREPARE|DEALLOCATE)\b"),
    "DISCARD": re.compile(r"^\s*DISCARD\b"),
    "a held cursor": re.compile(r"\bWITH\s+HOLD\b", re.IGNORECASE),
    "a temporary table": re.compile(r"\bCREATE\s+(GLOBAL\s+|LOCAL\s+)?TEMP(ORARY)?\b", re.IGNORECASE),
    # The _xact_ variants end with the transaction and are fine.
    "a session advisory lock": re.compile(r"\bpg_(try_)?advisory_(un)?lock(_shared|_all)?\s*\(", re.IGNORECASE),
    "set_config(..., false)": re.compile(r"\bset_config\s*\([^)]*,\s*false\s*\)", re.IGNORECASE),
}
# Connection methods that keep state on the server beyond a statement: conn.prepare() makes
# a named prepared statement (whatever the statement cache), a cursor outside a transaction
# is refused anyway, add_listener is a LISTEN.
SESSION_METHODS = {"prepare", "cursor", "add_listener"}
# The names the code gives a connection (an aiohttp response has a prepare() of its own).
CONNECTIONS = {"conn", "connection"}


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant, f-strings joined with a placeholder for their values."""
    found: list[tuple[int, str]] = []
    parts_of_fstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)
            found.append((node.lineno, text))
            parts_of_fstrings.update(id(v) for v in node.values)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts_of_fstrings:
            found.append((node.lineno, node.value))
    return found


def offences(path: Path, name: str) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for line, text in _strings(tree):
        if not SQL_START.match(text):
            continue
        for statement in text.split(";"):
            for what, shape in SESSION_LEVEL.items():
                if shape.search(statement):
                    found.append(f"{name}:{line}: {what}: {statement.strip()[:80]}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in SESSION_METHODS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in CONNECTIONS
        ):
            found.append(f"{name}:{node.lineno}: .{node.func.attr}() keeps state on the server connection")
    return found


def test_no_session_level_sql_on_pooled_connections():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name not in DIRECT:
            found += offences(path, name)
    assert not found, "session-level state on pooled connections:\n" + "\n".join(found)


def test_the_check_finds_what_the_migrations_do_on_their_direct_connection():
    # The migration lock is the one session-level thing authsvc does; the walk must see it.
    found = offences(PACKAGE / "db" / "migrate.py", "db/migrate.py")
    assert any("a session advisory lock" in line and "pg_advisory_lock" in line for line in found), found
    assert any("pg_advisory_unlock" in line for line in found), found


def test_the_check_tells_session_state_from_transaction_state(tmp_path):
    bad = [
        'await conn.execute("SET statement_timeout = 0")',
        'await conn.execute("RESET ALL")',
        'await conn.execute("LISTEN events")',
        'await conn.execute("CREATE TEMP TABLE t (id int)")',
        'await conn.execute("DECLARE c CURSOR WITH HOLD FOR SELECT 1")',
        "await conn.execute(\"SELECT set_config('search_path', 'x', false)\")",
        'await conn.fetchval("SELECT pg_try_advisory_lock($1)", 1)',
        'await conn.prepare("SELECT 1")',
        'conn.cursor("SELECT 1")',
    ]
    good = [
        'await conn.execute("SET LOCAL statement_timeout = 0")',
        'await conn.fetchval("SELECT pg_advisory_xact_lock($1)", 1)',
        'await conn.execute("UPDATE t SET a = 1 WHERE id = $1", 1)',
        'await conn.execute(f"UPDATE t SET a = {A} WHERE id = $1", 1)',
        '"""Set the name; LISTEN is not used here."""',
    ]
    module = tmp_path / "module.py"
    for line in bad:
        module.write_text(f"async def f(conn):\n    {line}\n", encoding="utf-8")
        assert offences(module, "module.py"), line
    for line in good:
        module.write_text(f"async def f(conn):\n    {line}\n", encoding="utf-8")
        assert not offences(module, "module.py"), line
