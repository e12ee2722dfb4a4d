"""Log lines: one JSON object each (or plain text), tagged with the request they belong to.

The request id lives in a context variable set by the observe middleware, so every line
logged while a request is handled carries it, whichever module logs. Fields passed with
`extra={...}` become keys of the object. Nothing here filters secrets: the rule is that
no code logs them (the test suite greps a whole run's log for them). The one exception is
aiohttp's parser, whose error messages quote what the client sent (MalformedRequests).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import RequestPayloadError

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


@dataclass
class RequestContext:
    request_id: str
    user_id: int | None = None


current: ContextVar[RequestContext | None] = ContextVar("authsvc_request", default=None)

# Runs shaped like our access tokens (a JWT starts with `eyJ`) and refresh tokens (`rt_`).
TOKEN_SHAPED = re.compile(r"eyJ[\w.-]*|rt_[\w-]*", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CLIENT_TEXT_MAX = 200


def client_text(text: str) -> str:
    """Text a client chose (a path), fit for a log line: a token sent in the wrong place
    does not reach the log, nor do control characters that would forge a line of text."""
    text = TOKEN_SHAPED.sub("[redacted]", text)
    if len(text) > CLIENT_TEXT_MAX:
        text = text[:CLIENT_TEXT_MAX] + "..."
    return _printable(text)


def _printable(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def note_user(user_id: int) -> None:
    """Name the user the current request acts for (a login learns it late)."""
    ctx = current.get()
    if ctx is not None:
        ctx.user_id = user_id


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
    if "request_id" not in fields:
        ctx = current.get()
        if ctx is not None:
            fields = {"request_id": ctx.request_id, **fields}
    return fields


class _Timestamps:
    """`2026-12-02T13:52:09.123+00:00` for a record's time, the part up to the second
    computed once per second rather than through a datetime per line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((created - second) * 1000):03d}+00:00"


def _dumps(line: dict[str, Any]) -> str:
    try:
        return orjson.dumps(line, default=str).decode()
    except TypeError:  # what orjson cannot write even through str (an int past 64 bits): json can
        return json.dumps(line, default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._timestamp = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": self._timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in _fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _dumps(line)


class TextFormatter(logging.Formatter):
    """One line per record, a traceback below it; a newline inside a message or a field is
    escaped, so no value can start a line of its own."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{self.formatTime(record)} {record.levelname} {record.name}: {_printable(record.getMessage())}"
        extra = " ".join(f"{k}={_printable(str(v))}" for k, v in _fields(record).items())
        if extra:
            text += f" [{extra}]"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


def _client_fault(exc: BaseException | None) -> BaseException | None:
    """The parser or payload error somewhere in exc's chain, if a client's bytes caused it."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (HttpProcessingError, RequestPayloadError)):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


class MalformedRequests(logging.Filter):
    """aiohttp's parser errors quote up to 100 bytes of what the client sent (an Authorization
    header, a chunk of a body) and come with a traceback: keep the kind of error and who sent
    it, drop the bytes. A body that does not decompress is the client's fault too, not an
    ERROR of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        fault = _client_fault(record.exc_info[1] if record.exc_info else None)
        if fault is not None:
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
            if isinstance(remote, str):
                record.msg, record.args = "refused a malformed request from %s: %s", (remote, type(fault).__name__)
            else:
                record.msg, record.args = "refused a malformed request: %s", (type(fault).__name__,)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_MALFORMED = MalformedRequests()


def quiet_malformed_requests() -> None:
    """Install the filter on aiohttp's server logger (once, however many apps are made)."""
    logger = logging.getLogger("aiohttp.server")
    if _MALFORMED not in logger.filters:
        logger.addFilter(_MALFORMED)


class LoopBatchedStream(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines logged on a running event loop are written together once per loop iteration:
    one write and flush for a burst of access lines, rather than a write and a flush each.
    Lines logged off any loop (start-up, threads) are written at once, after what is pending;
    what is pending at exit is written by logging's shutdown (flush)."""

    MAX_PENDING = 512  # written at once past this, whatever the loop does

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._pending.append(line)
        if loop is None or len(self._pending) >= self.MAX_PENDING:
            self.flush()
        elif self._scheduled_on is not loop:  # also when the loop it was scheduled on ended first
            self._scheduled_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:
            self._scheduled_on = None
            if not self._pending:
                return
            text, self._pending = "".join(self._pending), []
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:  # a closed or broken stderr must not fail the request that logged
                pass


def setup(level: str, fmt: str = "json") -> None:
    """Send every log line to stderr in the chosen format (replacing earlier set-up)."""
    # The logging HOWTO's optimisations for what no line of ours shows: the caller's file and
    # line (a walk up the stack per record), the thread and the multiprocessing names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = LoopBatchedStream(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
