"""Background loops of one process: pruning, flushing, key reloads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from authsvc.db.pool import UNAVAILABLE_ERRORS

log = logging.getLogger(__name__)


async def every(seconds: float, job: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `job` every `seconds`, for ever; a failure is logged (an outage not even that:
    db.Database logs it once) and the next round tries again."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except UNAVAILABLE_ERRORS:
            pass
        except Exception:  # nothing must end the loop
            log.warning("%s failed", what, exc_info=True)


@contextlib.asynccontextmanager
async def running(*loops: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run the loops as tasks for the time of the block; cancel them at its end."""
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
