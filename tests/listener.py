"""A TCP listener that only counts who connects: the server of someone who redirected a
target in the database, which must never be reached."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass
class Listener:
    port: int = 0
    connections: int = 0


@contextlib.asynccontextmanager
async def counting_listener() -> AsyncIterator[Listener]:
    """A listener on loopback that counts connections and closes each at once."""
    listener = Listener()

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        listener.connections += 1
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    listener.port = server.sockets[0].getsockname()[1]
    try:
        yield listener
    finally:
        server.close()
        await server.wait_closed()
