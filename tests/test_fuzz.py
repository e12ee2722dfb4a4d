"""Every operation of /openapi.json, fuzzed by schemathesis against a real server and database.

The app runs on a loopback port in a thread of its own (schemathesis speaks plain HTTP
through requests). Protected operations get a signed-up user's bearer token, introspection
a service credential, so they are exercised past 401. Each response must be no 5xx and
conform to the document: status, headers, content type and body.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation

from authsvc.app import create_app
from authsvc.config import Settings
from authsvc.openapi import OPERATIONS

from helpers import PASSWORD

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ("fuzz-service", "fuzz-service-secret-0123456789")
EMAIL = "fuzz@example.com"
# Per operation and mode: about 30 s for the whole document on two cores. Raise it for a
# deeper run by hand: AUTHSVC_FUZZ_EXAMPLES=500 pytest tests/test_fuzz.py
EXAMPLES = int(os.environ.get("AUTHSVC_FUZZ_EXAMPLES", "20"))


class LiveServer:
    """create_app(settings) served on 127.0.0.1 from a background event loop."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-server", daemon=True)
        self.runner = web.AppRunner(self.app)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self) -> str:
        self.thread.start()
        self._call(self.runner.setup())
        self._call(web.TCPSite(self.runner, "127.0.0.1", 0).start())
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def live_url(settings: Settings) -> Iterator[str]:
    server = LiveServer(settings.replace(introspection_clients=(CLIENT,)))
    try:
        yield server.start()
    finally:
        server.stop()


class Account:
    """A user with a live session and a few todos; made again when a fuzzed call ends it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = requests.Session()
        self.token = ""
        self.renew()

    def renew(self) -> None:
        resp = self.http.post(f"{self.base_url}/users", json={"email": EMAIL, "password": PASSWORD})
        assert resp.status_code in (201, 409), resp.text
        resp = self.http.post(f"{self.base_url}/auth", json={"username": EMAIL, "password": PASSWORD})
        assert resp.status_code == 200, resp.text
        self.token = resp.json()["access_token"]
        for text in ("one", "two"):  # ids for the todo operations to find
            self.http.post(f"{self.base_url}/todos", json={"text": text}, headers=self.bearer())

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def headers_for(self, case: Any) -> dict[str, str]:
        header_mode = case.meta.components.get(ParameterLocation.HEADER) if case.meta else None
        if header_mode is not None and header_mode.mode.is_negative:
            return {}  # the generator spoils the credentials on purpose: send them as drawn
        security = case.operation.definition.raw.get("security") or []
        names = {name for requirement in security for name in requirement}
        if "bearerAuth" in names:
            return self.bearer()
        if "introspectionClient" in names:
            basic = base64.b64encode(":".join(CLIENT).encode()).decode()
            return {"Authorization": f"Basic {basic}"}
        return {}

    def after(self, case: Any, status: int) -> None:
        ends_session = {("DELETE", "/users/me"), ("POST", "/auth/logout"), ("POST", "/users/me/password")}
        if status < 300 and (case.method.upper(), case.path) in ends_session:
            self.renew()


@pytest.fixture
def account(live_url: str) -> Iterator[Account]:
    acc = Account(live_url)
    yield acc
    acc.http.close()


@pytest.fixture
def api_schema(live_url: str) -> Any:
    """The document as served, with requests going to the live server."""
    config = SchemathesisConfig.from_path(ROOT / "schemathesis.toml")
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json", config=config)
    schema.config.update(base_url=live_url)
    return schema


def _cases() -> list[Any]:
    """(method, path, mode) for every operation; negative data only where there is input to spoil."""
    params = []
    for (method, path), op in sorted(OPERATIONS.items(), key=lambda item: (item[0][1], item[0][0])):
        modes = [GenerationMode.POSITIVE]
        if op.json or op.form or op.query or "{" in path:
            modes.append(GenerationMode.NEGATIVE)
        params += [pytest.param(method, path, mode, id=f"{method} {path} {mode.value}") for mode in modes]
    return params


# Schemathesis' own pytest decorator does not run on pytest 9.2 (it sets Function._nodeid),
# so each operation is its own test here and Hypothesis draws from schemathesis' strategies.
@pytest.mark.slow
@pytest.mark.parametrize("method, path, mode", _cases())
def test_operation(method: str, path: str, mode: GenerationMode, api_schema: Any, account: Account) -> None:
    operation = api_schema[path][method]

    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call_and_validate(headers=account.headers_for(case), timeout=10)
        statuses.append(response.status_code)
        account.after(case, response.status_code)

    check()
    if mode == GenerationMode.POSITIVE and OPERATIONS[method, path].auth is not None:
        # The credentials worked: the operation itself was exercised, not only the auth check.
        assert set(statuses) - {401}, statuses
