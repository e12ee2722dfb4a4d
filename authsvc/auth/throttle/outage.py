"""Claims an outage left held, given back once the database answers again.

A database error is not a failed guess: it must neither count against the account nor leave
the pair held until the claim expires. What could not be given back when it ended is kept here,
and given back by the next claim or the background loop, one give-back at a time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from authsvc.db.pool import CONTENTION_ERRORS, UNAVAILABLE_ERRORS, Contended

log = logging.getLogger(__name__)

# What the give-back path treats as "try again later" rather than a lost claim.
RETRY_LATER = (*UNAVAILABLE_ERRORS, *CONTENTION_ERRORS, Contended)
UNRETURNED_MAX = 50_000  # claims kept to give back; past that they expire by themselves


class Abandonable(Protocol):
    async def abandon(self, outcome: str) -> None: ...


class Unreturned:
    """The claims still to give back, with the outcome each is to be recorded with."""

    def __init__(self) -> None:
        self.claims: list[tuple[Abandonable, str]] = []
        self._giving_back = asyncio.Lock()

    @property
    def giving_back(self) -> bool:
        """A give-back is under way (and may be waiting out a silent database)."""
        return self._giving_back.locked()

    @property
    def owed(self) -> bool:
        """Claims are still to be given back, or being given back now."""
        return bool(self.claims) or self.giving_back

    async def abandon(self, attempt: Abandonable, outcome: str) -> None:
        """Give back now; if the database is away, as soon as it is back."""
        try:
            await attempt.abandon(outcome)
        except RETRY_LATER:
            self.later(attempt, outcome)

    def later(self, attempt: Abandonable, outcome: str) -> None:
        if len(self.claims) < UNRETURNED_MAX:
            self.claims.append((attempt, outcome))

    async def give_back(self) -> None:
        async with self._giving_back:  # one at a time, and claims wait until it is done
            unreturned, self.claims = self.claims, []
            for i, (attempt, outcome) in enumerate(unreturned):
                try:
                    await attempt.abandon(outcome)
                except RETRY_LATER:
                    self.claims[:0] = unreturned[i:]
                    raise
                except Exception:  # not the database being away: retrying would not help
                    log.warning("could not give back a login claim", exc_info=True)
