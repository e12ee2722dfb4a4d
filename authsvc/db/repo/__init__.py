"""SQL, one module per table: explicit columns, $n parameters, rows to frozen dataclasses."""

from __future__ import annotations

import asyncpg

# Rows one pruning statement deletes at most: each stays far inside the statement timeout
# however much a long pause (an outage, a flood) left behind. Each prune picks its oldest
# rows by an index on the age it prunes by (ORDER BY that age, so no plan reads the table
# to find them), and each batch is a transaction of its own: no lock outlives one batch.
# The throttle tables' prunes pick their rows FOR UPDATE SKIP LOCKED: a row a login holds
# is left for the next round rather than waited for, so pruning cannot deadlock with the
# login path's lock order.
PRUNE_BATCH = 5000


async def delete_in_batches(conn: asyncpg.Connection, sql: str, *args: object) -> int:
    """Run `sql`, a DELETE of at most its last parameter's number of rows, until fewer go;
    return how many went in all. Each run commits on its own, so `conn` must not be in a
    transaction (that would hold every batch's locks to its end)."""
    if conn.is_in_transaction():
        raise RuntimeError("delete_in_batches commits each batch: call it outside a transaction")
    total = 0
    while True:
        deleted = int((await conn.execute(sql, *args, PRUNE_BATCH)).split()[-1])
        total += deleted
        if deleted < PRUNE_BATCH:
            return total
