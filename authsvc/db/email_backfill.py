"""The email keys of rows written before migration 0006, or by an older replica since.

migrate.py runs this after that migration's SQL, under the migration lock, each time it runs:
a no-op (one index look-up) once every row has its keys. Rows are taken oldest first (by id),
a batch to a transaction, so a long table is done in steps and an interrupted run goes on
where it stopped. Of two accounts that collide once normalised, the one keyed first keeps its
keys: of the rows that were there before 0006, the older one (new code serves only once they
are all keyed, and its signups then refuse look-alikes outright):

- the same key (`ａｎｎ@example.com` beside `ann@example.com`, or an invisible character
  inside): the other keeps its row, todos and email as stored, but no key, so no login finds
  it; it is disabled and its sessions end. An operator decides what becomes of it;
- the same skeleton only (`rn@example.com` beside `m@example.com`): the other keeps its key
  and can log in as before, but no skeleton (the first one's already stands for both).

Either way `email_collides_with` names the account that kept its keys, and a warning is logged.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from authsvc.auth import emails
from authsvc.db.repo import sessions as session_repo
from authsvc.db.repo import users

log = logging.getLogger(__name__)

BATCH = 1000
# A signup committed between the look-up and the update takes the key first; look again.
TRIES = 3


async def run(conn: asyncpg.Connection, batch: int = BATCH) -> int:
    """Key every row that has no key yet; return how many were looked at."""
    after, done = 0, 0
    while rows := await users.select_unkeyed(conn, after, batch):
        computed = await asyncio.to_thread(lambda: [emails.stored_keys(email) for _, email in rows])
        async with conn.transaction():
            for (user_id, _), (key, skeleton) in zip(rows, computed, strict=True):
                await _key_row(conn, user_id, key, skeleton)
        after, done = rows[-1][0], done + len(rows)
    if done:
        log.info("email keys: %d row(s) keyed", done)
    return done


async def _key_row(conn: asyncpg.Connection, user_id: int, key: str, skeleton: str) -> None:
    for attempt in range(TRIES):
        holder = await users.select_holder(conn, user_id, key, skeleton)
        try:
            async with conn.transaction():  # a savepoint: a lost race undoes this row only
                if holder is None:
                    await users.set_email_keys(conn, user_id, key, skeleton, None)
                    return
                holder_id, same_key = holder
                if same_key:
                    await users.set_email_keys(conn, user_id, None, None, holder_id)
                    await session_repo.revoke_all(conn, user_id, "email_collision")
                else:
                    await users.set_email_keys(conn, user_id, key, None, holder_id)
        except asyncpg.UniqueViolationError:
            if attempt + 1 == TRIES:
                raise
            continue
        log.warning(
            "email keys: user %d has the same %s as user %d: %s",
            user_id,
            "key" if same_key else "skeleton",
            holder_id,
            "disabled, no key" if same_key else "keeps its key, no skeleton",
        )
        return
