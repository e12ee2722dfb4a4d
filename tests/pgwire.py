"""A TCP hop in front of PostgreSQL that records the round trips its clients make.

It reads the frontend side of the wire protocol: after the start-up packet, each message is
a type byte and a length. A round trip ends with a Sync (the extended protocol: Parse, Bind,
Execute...) or is a simple Query; each is answered by one ReadyForQuery. The hop notes, per
round trip, the SQL of the statements in it (a prepared statement's text from its Parse), so
a failing count says which statements it saw.
"""

from __future__ import annotations

import asyncio
import struct

from pgbouncer import Server, database_of

_NOT_STARTUP = {80877103, 80877104}  # SSLRequest, GSSENCRequest: answered with one byte, then the real start-up


class RoundTrips:
    """`trips`: one list of statement texts per round trip, in the order they were made."""

    def __init__(self, url: str) -> None:
        self._server_at = Server.of(url)
        self._url = url
        self.trips: list[list[str]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Listen; return the URL that leads through the hop."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server_at.on_loopback(self._server.sockets[0].getsockname()[1], database_of(self._url))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    def reset(self) -> None:
        self.trips.clear()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        at = self._server_at
        if at.host.startswith("/"):  # a Unix socket directory
            server_r, server_w = await asyncio.open_unix_connection(f"{at.host}/.s.PGSQL.{at.port}")
        else:
            server_r, server_w = await asyncio.open_connection(at.host, at.port)
        up = asyncio.create_task(self._frontend(client_r, server_w))
        down = asyncio.create_task(_pipe(server_r, client_w))
        self._tasks |= {up, down}
        try:
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self._tasks -= {up, down}
            for w in (client_w, server_w):
                w.close()

    async def _frontend(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        names: dict[str, str] = {}  # prepared statement name -> SQL, for this connection
        pending: list[str] = []
        try:
            while True:  # start-up packets: length, then a code
                head = await reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
                body = await reader.readexactly(length - 8)
                writer.write(head + body)
                await writer.drain()
                if code not in _NOT_STARTUP:
                    break
            while True:
                kind = await reader.readexactly(1)
                length = struct.unpack("!i", await reader.readexactly(4))[0]
                body = await reader.readexactly(length - 4)
                if kind == b"P":  # Parse: name, SQL
                    name, sql = body.split(b"\0")[:2]
                    names[name.decode()] = sql.decode()
                    pending.append(sql.decode())
                elif kind == b"B":  # Bind: portal, statement name
                    statement = body.split(b"\0")[1].decode()
                    pending.append(names.get(statement, statement))
                elif kind == b"S":
                    self.trips.append(_unique(pending))
                    pending = []
                elif kind == b"Q":
                    self.trips.append([body.rstrip(b"\0").decode()])
                writer.write(kind + struct.pack("!i", length) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()


def _unique(statements: list[str]) -> list[str]:
    """A statement prepared and run in one round trip is one statement, not two."""
    return list(dict.fromkeys(statements))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
