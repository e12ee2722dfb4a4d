"""A real PgBouncer in transaction mode in front of the test PostgreSQL, for the tests that
need one (tests/system/test_pgbouncer.py) and for running the API tests through one
(AUTHSVC_TEST_PGBOUNCER=1, see conftest.py).

The Debian package's binary (`apt-get install pgbouncer`), found on PATH or in /usr/sbin.
It listens on a free loopback port, sends every database name on to the same database of
the test server (its `*` entry), takes the test server's user without a password of its
own (`auth_type = trust`), and is stopped at the end.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
from servers import free_port

from authsvc.settings import Settings

CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
# Transaction mode, as the deployment has it. Server connections per database and
# user: enough for the API tests' parallel logins and signups, few enough to be shared.
POOL_SIZE = 20
# A client waiting this long for a server connection is an error, not a hang of the run.
QUERY_WAIT_TIMEOUT = 30


def binary() -> str | None:
    """The pgbouncer executable, or None where it is not installed."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)


MISSING = "pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)"


@dataclass(frozen=True)
class Server:
    """Where the test PostgreSQL listens, and as whom the tests connect to it."""

    host: str  # a host name or address, or a Unix socket directory
    port: int
    user: str
    password: str | None
    template: str  # one of its database URLs

    @classmethod
    def of(cls, url: str) -> Server:
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        host = query.get("host") or parts.hostname or "localhost"
        port = int(query.get("port") or parts.port or 5432)
        user = query.get("user") or urllib.parse.unquote(parts.username or "") or "postgres"
        password = query.get("password") or (urllib.parse.unquote(parts.password) if parts.password else None)
        return cls(host, port, user, password, url)

    def on_loopback(self, port: int, database: str) -> str:
        """The URL of `database`, as this server's user, at 127.0.0.1:`port`: a PgBouncer or
        a hop in front of this server."""
        user = urllib.parse.quote(self.user, safe="")
        secret = f":{urllib.parse.quote(self.password, safe='')}" if self.password else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{port}/{urllib.parse.quote(database)}"


def database_of(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.lstrip("/"))


@dataclass(frozen=True)
class Bouncer:
    port: int
    server: Server
    log: Path

    def through(self, url: str) -> str:
        """The URL of the same database through this PgBouncer."""
        return self.server.on_loopback(self.port, database_of(url))

    def direct(self, url: str) -> str:
        """The URL of the same database on the server itself, whichever URL was given."""
        parts = urllib.parse.urlsplit(self.server.template)
        return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(database_of(url))))

    def variables(self, url: str) -> dict[str, str]:
        """The AUTHSVC_* variables of a server process on `url`'s database behind this PgBouncer."""
        return {
            "AUTHSVC_DATABASE_URL": self.through(url),
            "AUTHSVC_MIGRATE_DATABASE_URL": self.direct(url),
            "AUTHSVC_DB_PGBOUNCER": "true",
        }

    def logins(self) -> int:
        """Client logins PgBouncer has logged so far."""
        return self.log.read_text(errors="replace").count("login attempt:")

    async def reconnect(self) -> None:
        """Close its server connections as they come free (its admin console's RECONNECT), so
        that the next ones start with PostgreSQL's current role and database settings."""
        # The console takes simple queries only: no statement is prepared for execute() without arguments.
        conn = await asyncpg.connect(self.through("pgbouncer"), statement_cache_size=0)
        try:
            await conn.execute("RECONNECT")
        finally:
            await conn.close()


def _run_as(server: Server) -> str | None:
    """PgBouncer refuses to run as root: as root, run it as the owner of the server's socket
    directory (the embedded server's user, who alone may enter it), else as nobody."""
    if os.geteuid() != 0:
        return None
    if server.host.startswith("/"):
        return pwd.getpwuid(os.stat(server.host).st_uid).pw_name
    return "nobody"


@contextmanager
def running(server_url: str) -> Iterator[Bouncer]:
    """A PgBouncer in transaction mode in front of the server of `server_url`, until the end."""
    executable = binary()
    assert executable, MISSING
    server = Server.of(server_url)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="authsvc-pgbouncer-") as tmp:
        workdir = Path(tmp)
        users = workdir / "users.txt"
        users.write_text(f'"{server.user}" "{server.password or ""}"\n', encoding="utf-8")
        assert not any(c.isspace() for c in server.host), f"a host pgbouncer.ini could not name: {server.host!r}"
        target = f"host={server.host} port={server.port}"
        (workdir / "pgbouncer.ini").write_text(
            "\n".join([
                "[databases]",
                f"* = {target}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {users}",
                "pool_mode = transaction",
                f"default_pool_size = {POOL_SIZE}",
                "max_client_conn = 2000",
                f"query_wait_timeout = {QUERY_WAIT_TIMEOUT}",
                f"admin_users = {server.user}",
                "",
            ]),
            encoding="utf-8",
        )
        log = workdir / "pgbouncer.log"
        user = _run_as(server)
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (workdir, users, workdir / "pgbouncer.ini"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            users.chmod(0o600)
        with log.open("wb") as out:
            command = [executable, *(["-u", user] if user else []), str(workdir / "pgbouncer.ini")]
            proc = subprocess.Popen(command, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        try:
            _wait_listening(proc, port, log)
            yield Bouncer(port, server, log)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # immediate shutdown: the clients are done
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"pgbouncer exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"pgbouncer did not listen on port {port} in 15 s:\n{log.read_text(errors='replace')}")


@dataclasses.dataclass(frozen=True)
class ThroughPgBouncer(Settings):
    """The suite's settings with the run's PgBouncer in front of the database: a database URL
    a test puts in (`base_settings.replace(database_url=...)`) is the same database through
    the PgBouncer, with the migrations on the database itself, as a deployment has them."""

    bouncer: ClassVar[Bouncer]

    @classmethod
    def around(cls, settings: Settings, bouncer: Bouncer) -> ThroughPgBouncer:
        cls.bouncer = bouncer
        fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)}
        return cls(**fields).replace(database_url=settings.database_url, db_pgbouncer=True)

    def replace(self, **changes: Any) -> Settings:
        url = changes.get("database_url")
        if url is not None and "migrate_database_url" not in changes:
            changes.update(database_url=self.bouncer.through(url), migrate_database_url=self.bouncer.direct(url))
        return super().replace(**changes)
