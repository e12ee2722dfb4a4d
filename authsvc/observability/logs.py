"""Log lines: one JSON object each (or plain text), tagged with the request they belong to.

The request id lives in a context variable set by the observe middleware, so every line
logged while a request is handled carries it, whichever module logs. Fields passed with
`extra={...}` become keys of the object. Nothing here filters secrets: the rule is that
no code logs them (the test suite greps a whole run's log for them). The one exception is
aiohttp's parser, whose error messages quote what the client sent (MalformedRequests).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
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
        return json.dumps(line, default=str, ensure_ascii=False)


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


def setup(level: str, fmt: str = "json") -> None:
    """Send every log line to stderr in the chosen format (replacing earlier set-up)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
