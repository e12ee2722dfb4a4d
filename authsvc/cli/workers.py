"""Several worker processes on one port: `authsvc serve --workers N`.

Each worker is a whole authsvc (its own event loop, pool and bcrypt threads) listening on the
same address with SO_REUSEPORT, so the kernel spreads connections over them; anything they
must share is in PostgreSQL. The parent applies the migrations once, starts the workers, and
on SIGTERM or SIGINT passes the signal on and waits for each to finish its requests. If a
worker dies, the others are stopped too and the exit code says so: restarting is the
supervisor's job (systemd, the container runtime), which sees a clean failure.

The workers' metrics meet in a private directory the parent creates (PROMETHEUS_MULTIPROC_DIR,
see metrics.py): emptied at start, a dead worker's live gauges dropped, removed at the end.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
from types import FrameType

from aiohttp import web
from prometheus_client import multiprocess

from authsvc.app import create_app
from authsvc.observability import logs
from authsvc.observability.metrics import MULTIPROC_ENV
from authsvc.settings import Settings

log = logging.getLogger(__name__)


def new_loop() -> object | None:
    """A uvloop event loop where uvloop is installed (`pip install uvloop`), else None (asyncio's)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop()


def run(settings: Settings, *, reuse_port: bool = False, announce: bool = True) -> None:
    """Serve in this process until SIGTERM or SIGINT, then stop gracefully.

    On the signal aiohttp closes the listening socket (new connections are refused), closes
    idle keep-alive connections, lets each request in flight finish and send its whole
    answer for up to `shutdown_timeout` seconds, cancels what is still running after that,
    and then runs the cleanup contexts (refusal events flushed, pool closed).
    """
    logs.setup(settings.log_level, settings.log_format)
    where = f"http://{settings.host}:{settings.port}"
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        reuse_port=reuse_port,
        loop=new_loop(),
        print=(lambda _: print(f"authsvc: listening on {where}", file=sys.stderr)) if announce else None,
        access_log=None,  # the observe middleware writes one line per request instead
        shutdown_timeout=settings.shutdown_timeout,
    )
    log.info("stopped")


def _worker(settings: Settings) -> None:
    run(settings, reuse_port=True, announce=False)


def run_many(settings: Settings, count: int) -> int:
    """Run `count` workers on one port; return the exit code."""
    metrics_dir = tempfile.mkdtemp(prefix="authsvc-metrics-")  # mode 0700, empty
    os.environ[MULTIPROC_ENV] = metrics_dir  # inherited by the spawned workers
    try:
        return _supervise(settings, count, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(settings: Settings, count: int, metrics_dir: str) -> int:
    context = multiprocessing.get_context("spawn")  # a clean interpreter each: no inherited loop or pool
    procs = [context.Process(target=_worker, args=(settings,), name=f"authsvc-worker-{i}") for i in range(count)]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.start()
    print(f"authsvc: listening on http://{settings.host}:{settings.port} with {count} workers", file=sys.stderr)

    sentinels = {proc.sentinel: proc for proc in procs}
    code = 0
    while sentinels:
        for ready in multiprocessing.connection.wait(list(sentinels)):
            proc = sentinels.pop(ready)
            proc.join()
            multiprocess.mark_process_dead(proc.pid, metrics_dir)
            # Killed by the signal passed on: it had not started serving yet (aiohttp's handlers
            # were not installed), so nothing was in flight.
            early = stopping and proc.exitcode in (-signal.SIGTERM, -signal.SIGINT)
            if proc.exitcode and not early:
                code = 1  # also while stopping: a worker that failed to stop cleanly says so
                if stopping:
                    log.error("%s exited with %s while stopping", proc.name, proc.exitcode)
                else:
                    log.error("%s exited with %s; stopping the others", proc.name, proc.exitcode)
                    stop(signal.SIGTERM, None)
    return code
