"""Prometheus metrics: what one process counts, and how /metrics shows all of them.

Each app has its own registry, so several apps in one process (the tests) do not collide.
Under `authsvc serve --workers N` the parent sets PROMETHEUS_MULTIPROC_DIR before spawning:
prometheus_client then keeps every value in a per-process file there, and /metrics merges
the files of all workers, so whichever worker answers shows the same totals. Gauges say how
they merge (`livesum`: added up over the running workers; `livemax`: the worst of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from authsvc.appkeys import HASHER, METRICS, POOL
from authsvc.settings import IPNetwork
from authsvc.settings.networks import in_networks, parse_ip

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
READ_ATTEMPTS = 5
READ_RETRY_SECONDS = 0.01
# How often the loop lag, the pool and the bcrypt queue are sampled.
SAMPLE_EVERY = 1.0
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
LOGIN_OUTCOMES = ("success", "failure", "throttled", "busy", "error")
# From a cached read (well under a millisecond) to a failed login that waits out the
# longest backoff (30 s by default, the 401 is delayed as long).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


def multiprocess_dir() -> str | None:
    """The shared directory, if this process writes its metrics to one.

    prometheus_client picks in-memory or file-backed values when it is first imported, so
    a variable set after that changes nothing: both must agree.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if path and values.ValueClass is not values.MutexValue:
        return path
    return None


class Metrics:
    def __init__(self) -> None:
        own = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "authsvc_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
            registry=own,
        )
        self.latency = Histogram(
            "authsvc_http_request_duration_seconds",
            "Time from the request reaching the app to its response being ready.",
            ("route", "method", "status"),
            buckets=REQUEST_BUCKETS,
            registry=own,
        )
        self.logins = Counter(
            "authsvc_logins",
            "Password checks (login, token grant, password change) by outcome.",
            ("outcome",),
            registry=own,
        )
        self.pool_connections = Gauge(
            "authsvc_db_pool_connections",
            "Open database connections, idle or in use.",
            ("state",),
            registry=own,
            multiprocess_mode="livesum",
        )
        self.pool_max = Gauge(
            "authsvc_db_pool_max_connections",
            "The most connections the pools may open.",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.bcrypt = Gauge(
            "authsvc_bcrypt_jobs",
            "Password hashes and checks running on a bcrypt thread or waiting for one.",
            ("state",),
            registry=own,
            multiprocess_mode="livesum",
        )
        self.loop_lag = Gauge(
            "authsvc_event_loop_lag_seconds",
            "How late the latest timer woke up (the slowest worker's).",
            registry=own,
            multiprocess_mode="livemax",
        )
        self.loop_lag_seen = Histogram(
            "authsvc_event_loop_lag_sampled_seconds",
            "How late the periodic timer woke up, every sample.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=own,
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        for outcome in LOGIN_OUTCOMES:  # present at zero from the start: rate() needs a baseline
            self.logins.labels(outcome)
        shared = multiprocess_dir()
        if shared is None:
            self.registry = own
        else:
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=shared)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        # labels() takes a lock and builds a tuple per call; a request's children are few
        # (routes x methods x statuses), so they are looked up once and kept.
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method, str(status)),
            )
        children[0].inc()
        children[1].observe(seconds)

    def login(self, outcome: str) -> None:
        self.logins.labels(outcome).inc()

    def sample(self, app: web.Application) -> None:
        """Read the pool and the bcrypt queue into their gauges."""
        database = app.get(POOL)
        pool = database.pool if database is not None else None
        if pool is not None:
            size, idle = pool.get_size(), pool.get_idle_size()
            self.pool_connections.labels("idle").set(idle)
            self.pool_connections.labels("in_use").set(size - idle)
            self.pool_max.set(pool.get_max_size())
        hasher = app.get(HASHER)
        if hasher is not None:
            self.bcrypt.labels("running").set(hasher.running)
            self.bcrypt.labels("waiting").set(hasher.waiting)

    def lag(self, seconds: float) -> None:
        self.loop_lag.set(seconds)
        self.loop_lag_seen.observe(seconds)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """Body and content type for this Accept header (Prometheus text, or OpenMetrics if
        asked); reads the workers' files in multiprocess mode, so run it off the loop.

        A worker that is starting creates its files empty and sizes them a moment later;
        read in between, one fails to unpack (struct.error). Such a read is tried again a few
        times, then MetricsUnreadable (the view answers 503), never a 500."""
        encoder, content_type = choose_encoder(accept)
        for attempt in range(READ_ATTEMPTS):
            try:
                return encoder(self.registry), content_type
            except struct.error:
                time.sleep(READ_RETRY_SECONDS * (attempt + 1))
        raise MetricsUnreadable()


class MetricsUnreadable(Exception):
    """A worker's metrics file stayed unreadable (half-created) for every attempt."""


def allowed(peer: str | None, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether the direct peer of the connection may read /metrics (never X-Forwarded-For)."""
    ip = parse_ip(peer or "")
    return ip is not None and in_networks(ip, networks)  # None: not an IP socket


async def _sample_forever(app: web.Application, metrics: Metrics) -> None:
    loop = asyncio.get_running_loop()
    metrics.sample(app)  # gauges right from the start, not one interval later
    while True:
        start = loop.time()
        await asyncio.sleep(SAMPLE_EVERY)
        # Anything that held the loop (blocking code, a long callback) shows as a late wake-up.
        metrics.lag(max(0.0, loop.time() - start - SAMPLE_EVERY))
        metrics.sample(app)


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """Sample the gauges while the app runs (after the pool and the hasher exist)."""
    task = asyncio.create_task(_sample_forever(app, app[METRICS]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
