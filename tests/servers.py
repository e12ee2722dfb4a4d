"""Real `authsvc` processes for the tests that need one: started, awaited, stopped."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from authsvc.db import embedded, migrate

COMMAND = [sys.executable, "-m", "authsvc"]
# The log file of every server process a test started, with the settings it was given:
# searched for secrets at the end of the run like the run's own log (conftest.run_log).
SERVER_LOGS: list[tuple[Path, dict[str, str]]] = []


def server_log(path: Path, settings: dict[str, str]) -> Path:
    """Name a server process's log for the end-of-run secret search."""
    SERVER_LOGS.append((path, dict(settings)))
    return path


def server_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    env.update(settings)
    return env


def run_command(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], env=server_env(**settings), capture_output=True, text=True, timeout=60)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, below the kernel's ephemeral range.

    A port from bind(0) is an ephemeral one: between closing it here and the server's own
    bind, any outgoing connection (a server's pool dialling PostgreSQL) may take it as its
    source port, and the server then finds it in use. Ports below the range are never given
    out that way; none is handed out twice in one run.
    """
    low, _ = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


@dataclass
class Served:
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text()

    def signal_group(self, signum: int) -> None:
        """Signal the whole process group, as a terminal's Ctrl-C, `timeout` or systemd do."""
        os.killpg(self.proc.pid, signum)


@contextmanager
def launched(cwd: Path, *args: str, port: int | None = None, **settings: str) -> Iterator[Served]:
    """`authsvc serve ARGS` started (not awaited) in a process group of its own; stopped at the end."""
    port = free_port() if port is None else port
    log = server_log(cwd / f"serve-{port}-{len(SERVER_LOGS)}.log", settings)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*COMMAND, "serve", "--port", str(port), *args],
            cwd=cwd,
            env=server_env(**settings),
            stdout=out,
            stderr=out,
            process_group=0,  # the tests' own signals (a Ctrl-C of pytest) do not reach it
        )
    try:
        yield Served(f"http://127.0.0.1:{port}", proc, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@asynccontextmanager
async def serving(cwd: Path, *args: str, port: int | None = None, **settings: str) -> AsyncIterator[Served]:
    """`authsvc serve ARGS`, once it answers /readyz; stopped at the end."""
    with launched(cwd, *args, port=port, **settings) as served:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                if served.proc.poll() is not None:
                    pytest.fail(f"authsvc exited early:\n{served.output}")
                try:
                    async with http.get(served.base + "/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("authsvc did not become ready in 30 s")
        yield served


def listeners(base: str) -> int:
    """Sockets listening on the port (one per worker: they share it with SO_REUSEPORT)."""
    port = f":{urlsplit(base).port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1].endswith(port) and row.split()[3] == "0A")  # 0A: LISTEN


async def all_workers_listening(base: str, workers: int) -> None:
    # /readyz answered by one worker says nothing of the others, still starting maybe.
    for _ in range(300):
        if listeners(base) == workers:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{workers} workers did not all listen in 15 s")


class Cluster:
    """One PostgreSQL server in a temporary directory, stopped and started at will."""

    def __init__(self, root: Path) -> None:
        module = embedded._server_module()
        # No clean-up by the library: it would stop the process it first started, which a
        # restart here has replaced. temporary_cluster stops the server and removes the directory.
        self.server = module.get_server(root / "pgdata", cleanup_mode=None)
        self.pg_ctl = module.pg_ctl
        self.socket_dir = self.server.get_postmaster_info().socket_dir
        self.admin_url = self.server.get_uri("postgres")

    def url(self, database: str) -> str:
        return self.server.get_uri(database)

    def _ctl(self, *args: str) -> None:
        self.pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def stop(self, mode: str) -> None:
        self._ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        self._ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start")

    def running(self) -> bool:
        return (self.server.pgdata / "postmaster.pid").exists()

    def processes(self) -> list[Any]:
        import psutil  # comes with the embedded PostgreSQL

        pid = int((self.server.pgdata / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]

    async def create_database(self, *, migrated: bool) -> str:
        name = f"cluster_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        if migrated:
            conn = await asyncpg.connect(self.url(name))
            try:
                await migrate.migrate(conn)
            finally:
                await conn.close()
        return self.url(name)


@contextmanager
def temporary_cluster(prefix: str) -> Iterator[Cluster]:
    """A Cluster in a temporary directory, stopped and removed at the end."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.chmod(tmp, 0o755)  # the server may run as another user (when the tests run as root)
        cluster = Cluster(Path(tmp))
        try:
            yield cluster
        finally:
            if cluster.running():
                cluster.stop("fast")


# With AUTHSVC_TEST_PGBOUNCER=1, the AUTHSVC_* variables that put the run's PgBouncer in
# front of a database (conftest.run_pgbouncer sets it): throw-away servers go through it too.
THROUGH_PGBOUNCER: Callable[[str], dict[str, str]] | None = None


def quick_settings(database_url: str, **extra: str) -> dict[str, str]:
    """AUTHSVC_* variables for a throw-away server: HS256 (no key file), cheap bcrypt."""
    database = {"AUTHSVC_DATABASE_URL": database_url}
    if THROUGH_PGBOUNCER is not None:
        database = THROUGH_PGBOUNCER(database_url)
    return {
        **database,
        "AUTHSVC_TOKEN_ALGORITHM": "HS256",
        "AUTHSVC_TOKEN_SECRET": secrets.token_urlsafe(48),
        "AUTHSVC_PASSWORD_PEPPER": secrets.token_urlsafe(48),
        "AUTHSVC_BCRYPT_ROUNDS": "4",
        **extra,
    }
