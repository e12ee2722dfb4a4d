"""GET /metrics: what it counts, who may read it, and one view over several workers."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
import time
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from helpers import PASSWORD, assert_error, bearer, login, signup
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from servers import quick_settings, serving

from authsvc import settings as config
from authsvc.appkeys import HASHER, POOL
from authsvc.appkeys import METRICS as METRICS_KEY
from authsvc.auth.passwords import CHECK
from authsvc.observability import metrics
from authsvc.settings import PRIVATE_NETWORKS, ConfigError

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: TestClient) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/plain"
    return parse(await resp.text())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: Samples, route: str, method: str = "GET", status: str = "200") -> float:
    return value(samples, "authsvc_http_requests_total", route=route, method=method, status=status)


async def test_requests_are_counted_and_timed_by_route_template(client, auth):
    todo = await (await client.post("/todos", json={"text": "count me"}, headers=auth)).json()
    before = await scrape(client)
    for _ in range(3):
        assert (await client.get(f"/todos/{todo['id']}", headers=auth)).status == 200
    assert (await client.get("/todos/999999", headers=auth)).status == 404
    after = await scrape(client)

    assert requests(after, "/todos/{id}") - requests(before, "/todos/{id}") == 3
    assert requests(after, "/todos/{id}", status="404") - requests(before, "/todos/{id}", status="404") == 1
    latency = ("authsvc_http_request_duration_seconds_count", frozenset({("route", "/todos/{id}"), ("method", "GET"), ("status", "200")}))
    assert after[latency] - before.get(latency, 0) == 3
    routes = {dict(labels).get("route") for name, labels in after if name == "authsvc_http_requests_total"}
    assert not any(str(todo["id"]) in route for route in routes), routes  # never the raw path


async def test_latency_buckets_reach_from_a_cached_read_to_the_longest_backoff(client):
    assert (await client.get("/healthz")).status == 200
    samples = await scrape(client)
    labels = {("route", "/healthz"), ("method", "GET"), ("status", "200")}
    bounds = sorted(
        float(dict(key)["le"])
        for name, key in samples
        if name == "authsvc_http_request_duration_seconds_bucket" and labels <= key
    )
    # A failed login's 401 waits out its backoff, up to 30 s by default: it must not fall in +Inf.
    assert bounds[0] <= 0.001 and 60.0 in bounds and bounds[-1] == float("inf")


async def test_unknown_routes_share_one_label(client):
    before = await scrape(client)
    for path in ("/a", "/b/c", f"/random/{secrets.token_hex(4)}"):
        assert (await client.get(path)).status == 404
    assert (await client.delete("/healthz")).status == 405
    after = await scrape(client)
    assert requests(after, "unmatched", status="404") - requests(before, "unmatched", status="404") == 3
    assert requests(after, "unmatched", "DELETE", "405") - requests(before, "unmatched", "DELETE", "405") == 1
    # Methods no route has (WebDAV's, say) fold into one label value.
    assert (await client.request("PROPFIND", "/healthz")).status == 405
    assert requests(await scrape(client), "unmatched", "other", "405") == 1


async def test_login_outcomes_are_counted_exactly(make_client):
    # A long backoff (not slept: max_sleeping=0) so that the attempt after a failure is refused.
    client = await make_client(login_backoff_base_ms=60_000, login_backoff_max_ms=60_000, max_sleeping=0)
    await signup(client, "counted@example.com")
    before = await scrape(client)
    await login(client, "counted@example.com")
    wrong = await client.post("/auth", json={"username": "counted@example.com", "password": "wrong password"})
    await assert_error(wrong, 401, "invalid_credentials")
    refused = await client.post("/auth", json={"username": "counted@example.com", "password": PASSWORD})
    await assert_error(refused, 429, "too_many_attempts")
    after = await scrape(client)

    moved = {
        outcome: value(after, "authsvc_logins_total", outcome=outcome)
        - value(before, "authsvc_logins_total", outcome=outcome)
        for outcome in metrics.LOGIN_OUTCOMES
    }
    assert moved == {"success": 1, "failure": 1, "throttled": 1, "busy": 0, "error": 0}


async def test_pool_gauges_follow_the_pool(client, app, settings):
    samples = await scrape(client)
    pool = app[POOL].pool
    assert pool is not None
    idle = value(samples, "authsvc_db_pool_connections", state="idle")
    in_use = value(samples, "authsvc_db_pool_connections", state="in_use")
    assert idle + in_use == pool.get_size() >= 1
    assert value(samples, "authsvc_db_pool_max_connections") == settings.db_pool_max
    async with pool.acquire():
        busy = await scrape(client)
    assert value(busy, "authsvc_db_pool_connections", state="in_use") == in_use + 1


async def test_bcrypt_queue_depth_is_shown(make_client):
    client = await make_client(hash_workers=1)
    hasher = client.app[HASHER]
    release = threading.Event()
    # Three jobs for one thread: one runs, two wait in the queue until released.
    jobs = [asyncio.create_task(hasher._run(CHECK, release.wait)) for _ in range(3)]
    await asyncio.sleep(0)
    try:
        samples = await scrape(client)
    finally:
        release.set()
        await asyncio.gather(*jobs)
    assert value(samples, "authsvc_bcrypt_jobs", state="running") == 1
    assert value(samples, "authsvc_bcrypt_jobs", state="waiting") == 2
    after = await scrape(client)
    assert value(after, "authsvc_bcrypt_jobs", state="running") == value(after, "authsvc_bcrypt_jobs", state="waiting") == 0


async def test_a_blocked_event_loop_shows_as_lag(monkeypatch, make_client):
    monkeypatch.setattr(metrics, "SAMPLE_EVERY", 0.01)
    client = await make_client()
    time.sleep(0.2)  # noqa: ASYNC251 - blocking the loop on purpose: that is what is measured
    for _ in range(100):
        samples = await scrape(client)
        if value(samples, "authsvc_event_loop_lag_seconds") >= 0.15:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail(f"no lag seen: {value(samples, 'authsvc_event_loop_lag_seconds')}")
    assert value(samples, "authsvc_event_loop_lag_sampled_seconds_count") >= 1
    assert value(samples, "authsvc_event_loop_lag_sampled_seconds_bucket", le="0.1") < value(
        samples, "authsvc_event_loop_lag_sampled_seconds_count"
    )


async def test_metrics_are_not_served_outside_the_allowed_networks(make_client):
    closed = await make_client(metrics_networks=(ip_network("10.0.0.0/8"),), trusted_proxies=(ip_network("127.0.0.1"),))
    resp = await closed.get("/metrics")
    body = await assert_error(resp, 404, "not_found")
    unknown = await (await closed.get("/no-such-route")).json()
    assert body == unknown  # indistinguishable from a route that does not exist
    # Judged on the connection's peer: a forwarded-for header from a trusted proxy changes nothing.
    resp = await closed.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"})
    await assert_error(resp, 404, "not_found")
    nobody = await make_client(metrics_networks=())
    await assert_error(await nobody.get("/metrics"), 404, "not_found")


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.20.30.40", True),
        ("172.16.0.1", True),
        ("172.32.0.1", False),
        ("192.168.1.1", True),
        ("fd12::1", True),
        ("8.8.8.8", False),
        ("2001:db8::1", False),
        ("", False),
        (None, False),
    ],
)
def test_by_default_only_loopback_and_private_peers_may_read_metrics(peer, allowed):
    assert metrics.allowed(peer, PRIVATE_NETWORKS) is allowed


def test_the_settings_parse_and_refuse_nonsense():
    assert config.from_env({}).metrics_networks == PRIVATE_NETWORKS
    s = config.from_env({"AUTHSVC_METRICS_NETWORKS": "10.1.0.0/16, ::1", "AUTHSVC_LOG_FORMAT": "Text"})
    assert s.metrics_networks == (ip_network("10.1.0.0/16"), ip_network("::1")) and s.log_format == "text"
    assert config.from_env({"AUTHSVC_METRICS_NETWORKS": ""}).metrics_networks == ()
    for var, bad in (("AUTHSVC_METRICS_NETWORKS", "the office"), ("AUTHSVC_LOG_FORMAT", "xml")):
        with pytest.raises(ConfigError, match=var):
            config.from_env({var: bad})


async def test_openmetrics_is_served_when_asked_for(client):
    resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.status == 200 and resp.content_type == "application/openmetrics-text"
    assert (await resp.text()).endswith("# EOF\n")


def _worker_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.slow
async def test_workers_show_one_sum_whichever_answers(databases, tmp_path):
    url = databases.create(migrated=False)
    settings = quick_settings(url, AUTHSVC_WORKERS="2", AUTHSVC_DB_POOL_MAX="3")
    count = 24
    # A new connection for every request, so the kernel spreads them over both workers.
    fresh = aiohttp.TCPConnector(force_close=True)
    async with serving(tmp_path, **settings) as served, aiohttp.ClientSession(connector=fresh) as http:
        # Ready means one worker answers; wait until both have opened their pools.
        for _ in range(300):
            async with http.get(served.base + "/metrics") as resp:
                # (503 while a worker that is starting has its file half made)
                if resp.status == 200 and value(parse(await resp.text()), "authsvc_db_pool_max_connections") == 2 * 3:
                    break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"the second worker did not start:\n{served.output}")
        for _ in range(count):
            async with http.get(served.base + "/healthz") as resp:
                assert resp.status == 200
        async with http.post(served.base + "/users", json={"email": "mp@example.com", "password": PASSWORD}) as resp:
            assert resp.status == 201
        credentials = {"username": "mp@example.com", "password": PASSWORD}
        async with http.post(served.base + "/auth", json=credentials) as resp:
            token = (await resp.json())["access_token"]
        async with http.get(served.base + "/users/me", headers=bearer(token)) as resp:
            assert resp.status == 200

        views = []
        for _ in range(6):
            async with http.get(served.base + "/metrics") as resp:
                assert resp.status == 200
                views.append(parse(await resp.text()))
        worker_pids = {json.loads(line)["pid"] for line in served.output.splitlines() if '"authsvc.access"' in line}
        metrics_dir = next(
            _worker_environ(pid)["PROMETHEUS_MULTIPROC_DIR"] for pid in worker_pids if Path(f"/proc/{pid}").exists()
        )

    for samples in views:
        assert requests(samples, "/healthz") == count
        assert value(samples, "authsvc_logins_total", outcome="success") == 1
        assert value(samples, "authsvc_db_pool_max_connections") == 2 * 3  # both workers' pools
    assert len(worker_pids) == 2, "both workers answered some of the requests"
    assert served.proc.returncode == 0
    assert not os.path.exists(metrics_dir), "the metrics directory is removed at the end"
    # The server's own log: JSON lines, and no secret in them.
    lines = [line for line in served.output.splitlines() if line.startswith("{")]
    assert len(lines) >= count
    parsed: list[dict[str, Any]] = [json.loads(line) for line in lines]
    assert all({"timestamp", "level", "logger", "message"} <= p.keys() for p in parsed)
    assert PASSWORD not in served.output and token not in served.output
    assert settings["AUTHSVC_PASSWORD_PEPPER"] not in served.output


def _registry_over(directory: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return registry


async def test_a_half_created_worker_file_is_read_again_not_a_500(client, tmp_path, monkeypatch):
    """A worker that is starting creates its file empty and sizes it a moment later."""
    half = tmp_path / "counter_4242.db"
    half.write_bytes(b"")
    collected = client.app[METRICS_KEY]
    collected.registry = _registry_over(tmp_path)
    # While the file stays empty: 503 busy with Retry-After, the scrape's answer to try again.
    resp = await client.get("/metrics")
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "busy", body
    assert int(resp.headers["Retry-After"]) >= 1

    # Once the worker has sized it (here: during the first wait), the same scrape succeeds.
    def sized(seconds: float) -> None:
        half.unlink()

    monkeypatch.setattr(metrics.time, "sleep", sized)
    resp = await client.get("/metrics")
    assert resp.status == 200, await resp.text()
