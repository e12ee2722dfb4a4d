"""The authsvc that authsvc.testing starts: a process on loopback over an embedded PostgreSQL
that this (the test) process owns, so that the operator commands it runs share it safely.

Plain blocking HTTP (urllib) on loopback: the helpers are called from sync and async tests
alike, and each call takes milliseconds."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from authsvc.db import embedded
from authsvc.verifier import Introspection, TokenVerifier

BUILTIN = ("profile", "todos", "admin", "introspect")
TESTER_ROLE = "tester"  # grants every scope: a token is then narrowed to what a test asks for
PASSWORD = secrets.token_urlsafe(24)  # every user's, this run only: nothing to keep or leak
ADMIN_EMAIL = "admin@example.com"
START_TIMEOUT = 60.0


class AuthsvcServer:
    """Hands out real tokens of a running authsvc."""

    def __init__(self, url: str, env: dict[str, str]) -> None:
        self.url = url
        self.issuer = "authsvc"
        self.audience = "authsvc"
        self._env = env
        self._admin: str | None = None
        self._introspector: tuple[str, str] | None = None
        self._made = 0

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/.well-known/jwks.json"

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = None,
             form: dict[str, str] | None = None, basic: tuple[str, str] | None = None) -> tuple[int, Any]:
        """One request to authsvc; (status, JSON body or None)."""
        headers = {}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if basic is not None:
            pair = ":".join(urllib.parse.quote(part, safe="") for part in basic)
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        return status, (json.loads(raw) if raw else None)

    def _ok(self, expected: int, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, answer = self.call(method, path, body, **kw)
        if status != expected:
            raise AssertionError(f"authsvc answered {method} {path} with {status}: {answer}")
        return answer

    def _name(self, what: str) -> str:
        self._made += 1
        return f"{what}-{self._made}-{secrets.token_hex(3)}"

    @property
    def admin_token(self) -> str:
        if self._admin is None:
            self._admin = self._ok(200, "POST", "/auth", {"email": ADMIN_EMAIL, "password": PASSWORD})["access_token"]
        return self._admin

    def user(self, email: str | None = None) -> dict[str, Any]:
        """A new user who may be given any scope; its JSON (id, email, ...)."""
        email = email or self._name("user") + "@example.com"
        user = self._ok(201, "POST", "/users", {"email": email, "password": PASSWORD})
        self._ok(200, "PUT", f"/admin/users/{user['id']}/roles", {"roles": [TESTER_ROLE]}, token=self.admin_token)
        return user

    def user_token(self, scopes: Iterable[str], email: str | None = None) -> str:
        """A login token of a (new) user carrying exactly these scopes."""
        user_email = email or self.user()["email"]
        body = {"email": user_email, "password": PASSWORD, "scope": " ".join(scopes)}
        return self._ok(200, "POST", "/auth", body)["access_token"]

    def client(self, scopes: Iterable[str], name: str | None = None) -> tuple[str, str]:
        """A new registered client allowed these scopes: (client_id, client_secret)."""
        body = {"name": name or self._name("client"), "scopes": list(scopes)}
        made = self._ok(201, "POST", "/admin/clients", body, token=self.admin_token)
        return made["id"], made["client_secret"]

    def client_token(self, scopes: Iterable[str]) -> str:
        """A client_credentials token of a new client allowed these scopes."""
        wanted = list(scopes)
        client_id, secret = self.client(wanted)
        form = {"grant_type": "client_credentials", "scope": " ".join(wanted)}
        return self._ok(200, "POST", "/auth/token", form=form, basic=(client_id, secret))["access_token"]

    def api_key(self, scopes: Iterable[str], expires_in: int | None = None) -> str:
        """A new user's API key acting with these scopes."""
        wanted = list(scopes)
        session = self.user_token(sorted({"profile", *wanted}))
        body: dict[str, Any] = {"name": self._name("key"), "scopes": wanted}
        if expires_in is not None:
            body["expires_in"] = expires_in
        return self._ok(201, "POST", "/users/me/api-keys", body, token=session)["key"]

    def introspection(self) -> Introspection:
        """Credentials for the verifier to ask about API keys (one client, made once)."""
        if self._introspector is None:
            self._introspector = self.client(["introspect"], name="authsvc-testing-introspection")
        client_id, secret = self._introspector
        return Introspection(f"{self.url}/auth/introspect", client_id, secret)

    def verifier(self, **options: Any) -> TokenVerifier:
        """A verifier of this authsvc's tokens and API keys, for the service under test."""
        options.setdefault("issuer", self.issuer)
        options.setdefault("audience", self.audience)
        options.setdefault("introspection", self.introspection())
        return TokenVerifier(self.jwks_url, **options)

    def command(self, *args: str, stdin: str | None = None) -> str:
        """`authsvc ARGS` against this instance's database; its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "authsvc", *args], env=self._env, input=stdin,
            capture_output=True, text=True, timeout=60,
        )
        if done.returncode != 0:
            raise AssertionError(f"authsvc {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"authsvc exited at start: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.05)
    raise RuntimeError(f"authsvc was not ready in {START_TIMEOUT:.0f} s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def started(directory: Path, scopes: Iterable[str] = ()) -> Iterator[AuthsvcServer]:
    """An authsvc over its own embedded PostgreSQL in `directory`, until the block ends."""
    extra = sorted(set(scopes) - set(BUILTIN))
    everything = ",".join([*BUILTIN, *extra])
    pg = embedded.start_server(directory / "pgdata", delete_on_exit=True)
    asyncio.run(embedded.ensure_database(pg.get_uri(), embedded.DATABASE))
    port = _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    env.update(
        AUTHSVC_DATA_DIR=str(directory / "data"),
        AUTHSVC_DATABASE_URL=pg.get_uri(embedded.DATABASE),
        AUTHSVC_BCRYPT_ROUNDS="4",
        AUTHSVC_SCOPES=" ".join(extra),
        AUTHSVC_ROLES=f"user=profile,todos admin=profile,todos,admin {TESTER_ROLE}={everything}",
        AUTHSVC_LOG_LEVEL="WARNING",
        # Tests log in often from one address: no throttling of that.
        AUTHSVC_ADDRESS_MAX_FAILURES_PER_MINUTE="10000",
    )
    url = f"http://127.0.0.1:{port}"
    server = AuthsvcServer(url, env)
    server.command("secrets", "init")
    server.command("migrate")
    server.command("users", "create", ADMIN_EMAIL, "--password-stdin", stdin=PASSWORD + "\n")
    server.command("users", "roles", ADMIN_EMAIL, "admin", TESTER_ROLE)
    log = directory / "authsvc.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "authsvc", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(url, process, log)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
