"""A raw protocol client for the tests: TLS, startup, the password, then bytes and frames."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from tether.proxy.pg import backend as be
from tether.proxy.pg import codec as c
from tether.proxy.pg import framing


def client_tls() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class Wire:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    framer: framing.BackendFramer = field(default_factory=framing.BackendFramer)
    frames: list[tuple[int, bytes, bytes]] = field(default_factory=list)

    @classmethod
    async def open(
        cls, port: int, *, tls: ssl.SSLContext | None = None, use_tls: bool = True
    ) -> Wire:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if use_tls:
            writer.write(c.SSLRequest().encode())
            assert await reader.readexactly(1) == b"S"
            await writer.start_tls(tls or client_tls())
        return cls(reader, writer)

    async def login(self, password: str, database: str = "app") -> list[tuple[int, bytes, bytes]]:
        """Startup and password; the frames up to the first ReadyForQuery (or an error)."""
        params = (("user", "bot"), ("database", database))
        self.send(c.StartupMessage(c.PROTOCOL_3_0, params).encode())
        first = await self.until({be.T_AUTH, be.T_ERROR})
        if first[-1][0] == be.T_ERROR:
            return first
        self.send(c.PasswordMessage(password.encode() + b"\x00").encode())
        return await self.until({be.T_READY, be.T_ERROR})

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def until(self, kinds: set[int], timeout: float = 10) -> list[tuple[int, bytes, bytes]]:
        """Frames up to and including the first of ``kinds``."""
        out: list[tuple[int, bytes, bytes]] = []
        while True:
            while self.frames:
                frame = self.frames.pop(0)
                out.append(frame)
                if frame[0] in kinds:
                    return out
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return out
            self.frames.extend(self.framer.feed(data))

    async def query(self, sql: str) -> list[tuple[int, bytes, bytes]]:
        self.send(c.Query(sql).encode())
        return await self.until({be.T_READY})

    async def closed(self, timeout: float = 5) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (ConnectionError, OSError):
            return True
        self.frames.extend(self.framer.feed(data))
        return not data

    def close(self) -> None:
        self.writer.close()


def errors(frames: list[tuple[int, bytes, bytes]]) -> list[be.ErrorResponse]:
    out = []
    for kind, body, _raw in frames:
        if kind == be.T_ERROR:
            message = be.decode_backend(kind, body)
            assert isinstance(message, be.ErrorResponse)
            out.append(message)
    return out


def status(frames: list[tuple[int, bytes, bytes]]) -> str | None:
    for kind, body, _raw in reversed(frames):
        if kind == be.T_READY:
            return chr(body[0])
    return None


def rows(frames: list[tuple[int, bytes, bytes]]) -> list[list[str | None]]:
    out = []
    for kind, body, _raw in frames:
        if kind == be.T_DATA_ROW:
            r = c.reader(body)
            row: list[str | None] = []
            for _ in range(r.count()):
                size = r.int32()
                row.append(None if size < 0 else r.raw(size).decode())
            out.append(row)
    return out
