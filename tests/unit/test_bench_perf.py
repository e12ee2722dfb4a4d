"""The pure parts of bench.perf's read comparison: round order, ratios, verdicts; and the
two servers of it that need no database."""

from __future__ import annotations

import json

import jwt
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bench import ceilings, tutorial
from bench.perf import read_verdict, round_order, verdict_line


def load(rps: float, p99: float, errors: int = 0) -> dict[str, float]:
    return {"requests_per_second": rps, "p50_ms": p99 / 2, "p99_ms": p99, "errors": errors}


def targets(authsvc: dict[str, float], tutorial_load: dict[str, float]) -> dict[str, dict[str, float]]:
    return {
        "authsvc": authsvc,
        "tutorial": tutorial_load,
        "reference": load(1000, 10),
        "ceiling_select1": load(4000, 5),
        "ceiling_constant": load(10000, 2),
    }


def test_round_order_goes_forwards_then_backwards():
    assert round_order(["a", "b"], 4) == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert round_order(["a", "b", "c"], 1) == ["a", "b", "c", "c", "b", "a"]  # rounded up to even
    order = round_order(["a", "b", "c", "d", "e"], 6)
    assert all(order.count(name) == 6 for name in "abcde")


def test_verdict_met_needs_the_speed_and_the_p99():
    v = read_verdict(1, "64", "/todos", targets(load(2600, 9), load(2000, 10)))
    assert v["met"] is True
    assert v["rps_over_tutorial"] == 1.3
    assert v["p99_over_tutorial"] == 0.9
    assert v["rps_over_ceiling_select1"] == 0.65
    assert v["rps_over_reference"] == 2.6
    assert (v["workers"], v["connections"], v["path"]) == (1, 64, "/todos")

    slow = read_verdict(1, "64", "/todos", targets(load(2500, 9), load(2000, 10)))
    assert slow["met"] is False  # 1.25x
    late = read_verdict(1, "64", "/todos", targets(load(3000, 11), load(2000, 10)))
    assert late["met"] is False  # p99 1.1x
    failing = read_verdict(1, "64", "/todos", targets(load(3000, 9, errors=3), load(2000, 10)))
    assert failing["met"] is False


def test_verdict_line_names_every_ratio_and_the_errors():
    v = read_verdict(2, "16", "/users/me", targets(load(1000, 20, errors=2), load(2000, 10)))
    line = verdict_line(v)
    assert line == (
        "[2w 16c] GET /users/me: NOT MET: 0.50x the tutorial reference's req/s (target >= 1.30x), "
        "p99 2.00x its (target <= 1.00x); 0.25x the one-query ceiling, 0.10x the constant answer; "
        "errors: authsvc 2"
    )
    met = verdict_line(read_verdict(1, "64", "/todos", targets(load(2600, 9), load(2000, 10))))
    assert met.startswith("[1w 64c] GET /todos: met: 1.30x")
    assert "errors" not in met


def test_verdict_without_a_tutorial_figure_is_not_met():
    v = read_verdict(1, "64", "/todos", targets(load(2600, 9), load(0, 0)))
    assert v["met"] is False
    assert "n/a the tutorial reference's req/s" in verdict_line(v)


def test_tutorial_reads_the_user_id_from_its_own_tokens_only():
    secret = "a shared secret of the benchmark, long enough for HS256"
    app = web.Application()
    app[tutorial.SECRET] = secret

    def user_id(header: str | None) -> int | None:
        headers = {"Authorization": header} if header is not None else {}
        return tutorial.current_user_id(make_mocked_request("GET", "/users/me", headers=headers, app=app))

    assert user_id("Bearer " + tutorial.token(secret, 42)) == 42
    assert user_id(None) is None
    assert user_id("Bearer " + tutorial.token("another secret, just as long as the first one", 42)) is None
    assert user_id("Bearer " + tutorial.token(secret, 42, ttl=-60)) is None  # expired
    none_alg = jwt.encode({"sub": "42"}, None, algorithm="none")
    assert user_id("Bearer " + none_alg) is None


async def test_constant_ceiling_answers_the_given_bytes(aiohttp_client):
    answers = {"/users/me": json.dumps({"id": 1, "email": "a@example.com"}), "/todos": "[]"}
    client = await aiohttp_client(ceilings.create_app(ceilings.Config(kind="constant", answers=answers)))
    for path, text in answers.items():
        resp = await client.get(path, headers={"Authorization": "Bearer whatever"})
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await resp.text() == text
    assert (await client.get("/elsewhere")).status == 404
