"""Start an authsvc process for a benchmark: embedded PostgreSQL by default, or a given URL."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def authsvc(database_url: str | None, **settings: str) -> AsyncIterator[str]:
    """Run `authsvc serve` until the block ends; yield its base URL."""
    with tempfile.TemporaryDirectory(prefix="authsvc-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
        env.update({"AUTHSVC_DATA_DIR": str(Path(tmp) / "data"), "AUTHSVC_LOG_LEVEL": "WARNING", **settings})
        if database_url:
            env.update(
                AUTHSVC_DATABASE_URL=database_url,
                AUTHSVC_TOKEN_SECRET=secrets.token_urlsafe(48),
                AUTHSVC_PASSWORD_PEPPER=secrets.token_urlsafe(48),
            )
        port = free_port()
        log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "authsvc", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
        base = f"http://127.0.0.1:{port}"
        try:
            await _wait_ready(base, proc, Path(tmp) / "serve.log")
            yield base
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()


async def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"authsvc exited:\n{log.read_text()}")
            try:
                async with http.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("authsvc did not become ready in 60 s")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
