"""Reading request bodies and query strings into validated data, and writing JSON answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from marshmallow import Schema, ValidationError

from authsvc.appkeys import SETTINGS
from authsvc.errors import (
    ClientGone,
    InvalidBody,
    InvalidJson,
    RequestTimeout,
    UnsupportedMediaType,
    ValidationFailed,
)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJson("The body is not valid UTF-8.") from None
    if not text.strip():
        raise InvalidJson("The body is empty; send a JSON object.")
    try:
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise InvalidJson("The body is nested too deeply.") from None
    except ValueError:
        raise InvalidJson() from None


def load(schema: Schema, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValidationFailed("Send a JSON object.")
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise ValidationFailed(details=_messages(exc)) from None


def _messages(exc: ValidationError) -> dict[str, Any]:
    messages = _string_keys(exc.normalized_messages())
    return messages if isinstance(messages, dict) else {"_schema": messages}


def _string_keys(messages: Any) -> Any:
    # A list field's messages are keyed by item index ({"roles": {0: [...]}}): JSON keys are
    # strings, and the encoder refuses an int key (a 500 instead of the 422).
    if isinstance(messages, dict):
        return {str(key): _string_keys(value) for key, value in messages.items()}
    return messages


async def read_json(request: web.Request, schema: Schema) -> dict[str, Any]:
    """The body as a validated JSON object; 415, 413, 400 or 422 otherwise."""
    return load(schema, await read_json_value(request))


async def read_json_value(request: web.Request) -> Any:
    """The body as parsed JSON, not validated yet (for a route that takes two shapes)."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType()
    if request.charset not in (None, "utf-8", "UTF-8"):
        raise UnsupportedMediaType("Send the body as UTF-8 JSON.")
    return _parse_json(await read_body(request))


async def read_body(request: web.Request) -> bytes:
    """The raw body; over client_max_size aiohttp raises 413 itself."""
    try:
        async with asyncio.timeout(request.app[SETTINGS].idle_timeout):
            return await request.read()
    except TimeoutError:  # a body sent slowly to hold the connection
        raise RequestTimeout() from None
    except (web.RequestPayloadError, HttpProcessingError):  # bad Content-Encoding bytes, a bad chunk
        raise InvalidBody() from None
    except ConnectionResetError:  # hung up mid-body; not to be mistaken for the database's OSErrors
        raise ClientGone() from None


def read_query(request: web.Request, schema: Schema) -> dict[str, Any]:
    query = request.query
    repeated = sorted({key for key in query if len(query.getall(key)) > 1})
    if repeated:
        raise ValidationFailed(details={key: ["Give this parameter once."] for key in repeated})
    return load(schema, dict(query))

