"""Refused logins, recorded in batches: a flood must cost neither a write nor a row per request."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from authsvc.db.pool import UNAVAILABLE_ERRORS, Database
from authsvc.db.repo import auth_events

log = logging.getLogger(__name__)

EVENT_FLUSH_EVERY = 1.0
EVENT_BUFFER_MAX = 50_000


class RefusalEvents:
    """Refusals are recorded in batches, one row per (identifier, address, budget) and flush
    with the number of attempts: a flood must cost neither a write nor a row per request."""

    def __init__(self, pool: Database) -> None:
        self._pool = pool
        self._pending: dict[tuple[str, str, str], list[Any]] = {}  # -> [first seen, attempts]
        self.dropped = 0

    def add(self, identifier: str, address: str, reason: str) -> None:
        seen = self._pending.get((identifier, address, reason))
        if seen is not None:
            seen[1] += 1
        elif len(self._pending) < EVENT_BUFFER_MAX:
            self._pending[(identifier, address, reason)] = [datetime.now(UTC), 1]
        else:
            self.dropped += 1

    @property
    def unrecorded(self) -> int:
        return sum(n for _, n in self._pending.values()) + self.dropped

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if pending:
            rows = [(at, ident, addr, "throttled", reason, n) for (ident, addr, reason), (at, n) in pending.items()]
            try:
                async with self._pool.acquire() as conn:
                    await auth_events.insert_many(conn, rows)
            except UNAVAILABLE_ERRORS:
                self._put_back(pending)  # the next flush tries again
                raise
        if self.dropped:
            log.warning("%d refused login attempts were not recorded (buffer full)", self.dropped)
            self.dropped = 0

    def _put_back(self, pending: dict[tuple[str, str, str], list[Any]]) -> None:
        for key, (at, n) in pending.items():
            seen = self._pending.get(key)
            if seen is not None:
                seen[0], seen[1] = min(seen[0], at), seen[1] + n
            elif len(self._pending) < EVENT_BUFFER_MAX:
                self._pending[key] = [at, n]
            else:
                self.dropped += n
