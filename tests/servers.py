"""Real `authsvc` processes for the tests that need one: started, awaited, stopped."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def quick_settings(database_url: str, **extra: str) -> dict[str, str]:
    """AUTHSVC_* variables for a throw-away server: HS256 (no key file), cheap bcrypt."""
    return {
        "AUTHSVC_DATABASE_URL": database_url,
        "AUTHSVC_TOKEN_ALGORITHM": "HS256",
        "AUTHSVC_TOKEN_SECRET": secrets.token_urlsafe(48),
        "AUTHSVC_PASSWORD_PEPPER": secrets.token_urlsafe(48),
        "AUTHSVC_BCRYPT_ROUNDS": "4",
        **extra,
    }
