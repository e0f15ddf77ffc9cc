"""A scripted HTTP/1.1 upstream on loopback that writes raw bytes (for misbehaving targets).

It parses each request just enough to find where it ends (``Content-Length`` or chunked),
records it with the number of the connection it came on, and writes whatever ``answer``
returns for it, byte for byte: a response, a response with extra bytes, a list of pieces
written 0.1 s apart, or nothing at all (``None``: the connection is closed without an
answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class RawSeen:
    connection: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name.lower()]


def ok(body: bytes = b"ok", *extra: bytes) -> bytes:
    """A well-framed 200 response with ``body``."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body)
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


@dataclass
class RawUpstream:
    answer: Callable[[RawSeen], bytes | list[bytes] | None]
    seen: list[RawSeen] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    def start(self) -> RawUpstream:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            await self.server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(main())

    def stop(self) -> None:
        def cancel() -> None:
            self.server.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()

        self.loop.call_soon_threadsafe(cancel)
        self.thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                seen = await _request(reader, number)
                if seen is None:
                    break
                self.seen.append(seen)
                data = self.answer(seen)
                if data is None:
                    break
                for i, piece in enumerate([data] if isinstance(data, bytes) else data):
                    if i:
                        await asyncio.sleep(0.1)
                    writer.write(piece)
                    await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


async def _request(reader: asyncio.StreamReader, number: int) -> RawSeen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    line, *lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, _version = line.split(" ")
    headers = [(n.strip().lower(), v.strip()) for n, _, v in (x.partition(":") for x in lines)]
    names = dict(headers)
    body = b""
    if names.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    elif "content-length" in names:
        body = await reader.readexactly(int(names["content-length"]))
    return RawSeen(number, method, target, headers, body)
