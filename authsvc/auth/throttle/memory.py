"""Refusals repeated from memory, so a flooding client costs a dictionary look-up per attempt
instead of a transaction.

Only refusals that a success or an operator can end early are remembered (an address block, a
pair's backoff): never a hold (the attempt in flight may end it any moment) nor an account
refusal (it depends on the owner's known addresses, which only the database knows). Memory is
trusted for at most `Limits.memory` seconds, then the database is asked again: that bounds how
long `authsvc throttle reset` takes to reach every process (polling, not LISTEN/NOTIFY: no extra
connection per worker to keep alive and reconnect, and it costs one transaction per refused pair
or address per interval).
"""

from __future__ import annotations

from collections.abc import Callable

REMEMBERED_MAX = 100_000
# Seconds before a remembered refusal ends that the database is asked instead.
MEMORY_MARGIN = 0.05


class Memory:
    """What this process remembers as closed: ("address", a) or (key, a) for logins,
    ("signup", a) for the signup budget."""

    def __init__(self, trust: float, clock: Callable[[], float]) -> None:
        self._trust = trust  # seconds a refusal is repeated before the database is asked again
        self._clock = clock
        # -> (loop time until which memory is trusted, loop time it opens)
        self.closed: dict[tuple[str, ...], tuple[float, float]] = {}

    def refusal(self, key: str, address: str) -> tuple[str, float] | None:
        """The budget that refuses the pair and the seconds until it opens, if remembered."""
        for budget, closed in (("address", ("address", address)), ("backoff", (key, address))):
            seconds = self.remembered(closed)
            if seconds is not None:
                return budget, seconds
        return None

    def remembered(self, closed: tuple[str, ...]) -> float | None:
        """The seconds until `closed` opens, while memory is trusted; else None."""
        remembered = self.closed.get(closed)
        if remembered is None:
            return None
        trusted_until, opens_at = remembered
        now = self._clock()
        if trusted_until <= now:
            del self.closed[closed]
            return None
        return opens_at - now

    def remember(self, closed: tuple[str, ...], seconds: float) -> None:
        # The wait was measured at the database a round trip ago: stop trusting memory a
        # little before the database opens, so memory never refuses what it would admit.
        trusted = min(seconds - MEMORY_MARGIN, self._trust)
        if trusted <= 0:
            return
        now = self._clock()
        if len(self.closed) >= REMEMBERED_MAX:
            self.closed = {k: v for k, v in self.closed.items() if v[0] > now}
            if len(self.closed) >= REMEMBERED_MAX:
                self.closed.clear()
        self.closed[closed] = (now + trusted, now + seconds)
