"""Several worker processes on one port: `authsvc serve --workers N`.

Each worker is a whole authsvc (its own event loop, pool and bcrypt threads) listening on the
same address with SO_REUSEPORT, so the kernel spreads connections over them; anything they
must share is in PostgreSQL. The parent applies the migrations once, starts the workers, and
on SIGTERM or SIGINT passes the signal on and waits for each to finish its requests (a
signal sent to the whole group reaches each worker twice: the second changes nothing). If a
worker dies, the others are stopped too and the exit code says so: restarting is the
supervisor's job (systemd, the container runtime), which sees a clean failure.

The workers' metrics meet in a private directory the parent creates (PROMETHEUS_MULTIPROC_DIR,
see metrics.py): emptied at start, a dead worker's live gauges dropped, removed at the end.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from multiprocessing import resource_tracker
from types import FrameType

from aiohttp import web
from prometheus_client import multiprocess

from authsvc.app import create_app
from authsvc.observability import logs
from authsvc.observability.metrics import MULTIPROC_ENV
from authsvc.settings import Settings

log = logging.getLogger(__name__)


# SIGTERM (systemd, the container runtime) and SIGINT (Ctrl-C) both stop gracefully. Either
# may come more than once: a terminal's Ctrl-C, `timeout` and systemd's default KillMode
# signal the whole process group, so a worker gets the group's signal and its parent's.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop (a dependency, where the platform has it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(settings: Settings, *, announce: bool = True) -> None:
    """Serve in this process until SIGTERM or SIGINT, then stop gracefully.

    On the signal aiohttp closes the listening socket (new connections are refused), closes
    idle keep-alive connections, lets each request in flight finish and send its whole
    answer for up to `shutdown_timeout` seconds, cancels what is still running after that,
    and then runs the cleanup contexts (refusal events flushed, pool closed). Signals that
    come after the first change nothing: the stop under way goes on to its end.

    The socket is bound with SO_REUSEPORT, for the other workers of this serve, and for
    another serve only if it was started with --reuse-port (check_port refuses it otherwise).
    """
    logs.setup(settings.log_level, settings.log_format)
    app = create_app(settings)  # before the loop: it reads the key file
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(app, settings, announce))
    log.info("stopped")


async def _serve(app: web.Application, settings: Settings, announce: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    # A worker starts with the signals held back (see _supervise): one that came meanwhile
    # is delivered now, to the handler, rather than as a KeyboardInterrupt mid-import.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    # No access log: the observe middleware writes one line per request instead.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()  # the cleanup contexts: pool, hasher, ...
    try:
        if stop.is_set():  # signalled while starting: no need to open the port at all
            return
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=True)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:  # a race with another process, or one that does not share
                raise PortInUse(_in_use(settings.host, settings.port, shared=True)) from None
            raise
        if announce:
            print(f"authsvc: listening on http://{settings.host}:{settings.port}", file=sys.stderr)
        await stop.wait()
    finally:
        await runner.cleanup()
        # Stopped: from here a late signal must not interrupt what is left (the embedded
        # PostgreSQL's own stop at exit, say) with a KeyboardInterrupt or a kill.
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)


class PortInUse(OSError):
    """The address serve was given is taken: said in one line, without a traceback."""


def _in_use(host: str, port: int, *, shared: bool) -> str:
    if shared:
        return f"{host}:{port} is in use by a process that does not share it: stop it, or choose another --port"
    return (
        f"{host}:{port} is in use already (another authsvc serve?): stop it, choose another --port, "
        "or pass --reuse-port to share it on purpose"
    )


def check_port(host: str, port: int, *, shared: bool) -> None:
    """Refuse an address something listens on already, before anything else is started.

    The workers bind with SO_REUSEPORT, so they would join any socket bound that way, an
    earlier serve's say, without a word and take part of its traffic. Without `shared`, a
    trial bind without SO_REUSEPORT fails if anything holds the port; with it, the trial
    binds as the workers will, and fails only where they could not share. (Two serves
    started in the same instant may both pass: the check is for mistakes, not a lock.)
    """
    for family, kind, proto, _, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as trial:
            trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio: TIME_WAIT is no listener
            if shared:
                trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                trial.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio's create_server
            try:
                trial.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(_in_use(host, port, shared=shared)) from None
                raise


def _worker(settings: Settings) -> None:
    try:
        run(settings, announce=False)
    except PortInUse as exc:
        print(f"authsvc: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


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
    # The workers start with the stop signals held back, and let them through once their
    # handlers are in place (see _serve): a group's Ctrl-C while they import is neither a
    # KeyboardInterrupt traceback nor lost. The mask is inherited over fork and exec. The
    # resource tracker is started first: starting it unblocks the signals again.
    resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for proc in procs:
            proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # one that came meanwhile: stop() now
    print(f"authsvc: listening on http://{settings.host}:{settings.port} with {count} workers", file=sys.stderr)

    sentinels = {proc.sentinel: proc for proc in procs}
    code = 0
    while sentinels:
        for ready in multiprocessing.connection.wait(list(sentinels)):
            proc = sentinels.pop(ready)
            proc.join()
            multiprocess.mark_process_dead(proc.pid, metrics_dir)
            if proc.exitcode:
                code = 1  # also while stopping: a worker that failed to stop cleanly says so
                if stopping:
                    log.error("%s exited with %s while stopping", proc.name, proc.exitcode)
                else:
                    log.error("%s exited with %s; stopping the others", proc.name, proc.exitcode)
                    stop(signal.SIGTERM, None)
    return code
