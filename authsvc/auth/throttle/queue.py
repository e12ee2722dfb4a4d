"""Turns per (identifier, address) in this process: requests past what a pair admits wait for
an attempt of the pair to end instead of being refused, within bounds.

The bounds are read when a request comes to wait, so a test may change them on this module.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

# Requests of one pair waiting for their turn in this process, and how long one may wait:
# past either it is refused (429, Retry-After 1) rather than queued without end.
PAIR_QUEUE_MAX = 64
PAIR_QUEUE_WAIT = 10.0
QUEUED_MAX = 10_000  # waiting for a turn in this process, all pairs together
# While another replica holds the pair, how often to look again.
HELD_POLL = 0.05


class QueueFull(Exception):
    """Past the queue's bounds: refuse with Retry-After 1 (the pair is busy, not closed)."""


class Pair:
    """This process's attempts on one (identifier, address): in flight, allowed, queued."""

    __slots__ = ("active", "limit", "waiting", "turn")

    def __init__(self) -> None:
        self.active = 0
        self.limit = 1  # until a claim shows the pair is clean and known
        self.waiting = 0
        self.turn = asyncio.Event()  # set (and replaced) whenever an attempt ends

    def release(self) -> None:
        """One attempt fewer in flight: wake those waiting for a turn."""
        self.active -= 1
        self.turn.set()
        self.turn = asyncio.Event()


class PairQueue:
    """The pairs with attempts in flight or waiting in this process."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._pairs: dict[tuple[str, str], Pair] = {}
        self.queued = 0  # requests now waiting for their pair's turn, all pairs together

    def pair(self, key: str, address: str) -> Pair:
        pair = self._pairs.get((key, address))
        if pair is None:
            pair = self._pairs[(key, address)] = Pair()
        return pair

    def forget_if_idle(self, pair: Pair, key: str, address: str) -> None:
        if pair.active == 0 and pair.waiting == 0:
            self._pairs.pop((key, address), None)

    def deadline(self) -> float:
        """The clock time past which a request arriving now stops waiting."""
        return self._clock() + PAIR_QUEUE_WAIT

    async def wait_turn(self, pair: Pair, deadline: float, poll: float | None) -> None:
        """Wait until an attempt of the pair ends here (or `poll` seconds); raise QueueFull
        past the queue's bounds."""
        left = deadline - self._clock()
        if left <= 0 or self.queued >= QUEUED_MAX or (poll is None and pair.waiting >= PAIR_QUEUE_MAX):
            raise QueueFull()
        pair.waiting += 1
        self.queued += 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, poll) if poll is not None else left):
                    await pair.turn.wait()
        finally:
            pair.waiting -= 1
            self.queued -= 1

    def end_turn(self, key: str, address: str) -> None:
        """A claimed attempt of the pair reported its outcome (or was given up)."""
        pair = self._pairs.get((key, address))
        if pair is None:
            return
        pair.release()
        self.forget_if_idle(pair, key, address)
