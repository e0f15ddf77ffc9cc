"""The broker's HTTP/1.1 client to targets: h11 framing over asyncio streams, with a pool.

Chosen by measurement over httpx and aiohttp (docs/http-broker.md, "Upstream client"): the
broker needs only one request at a time per connection, streamed both ways, and h11 gives
the framing rules (chunked, ``Content-Length``, ``HEAD``/``204``/``304``, ``Connection:
close``) without the URL, cookie and header models a general client builds per request.

Security decisions:

* **TLS is verified** (system trust store, or the target's ``ca_bundle`` only) with the
  host name checked, unless the target sets ``tls_verify: false``; such contexts are
  marked so the broker can log and audit the opt-out (:attr:`Origin.verified`).
* **A connection is reused only after a complete, well-framed exchange** (h11 back in
  ``IDLE`` on both sides) **that left nothing unread**: any error, a partial read, a
  timeout, or a byte the target sent beyond its response (a ``HEAD`` answered with a body,
  a body longer than its ``Content-Length``, anything sent while the connection was idle)
  discards it, so a response can never be read from the tail of another one.
* **Bounded**: at most ``pool_size`` idle connections per origin, idle ones closed after
  ``idle_timeout``; response header blocks over ``max_header_bytes`` fail the exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import h11

READ_CHUNK: Final = 65536
Header = tuple[bytes, bytes]


class UpstreamError(Exception):
    """The target could not be reached or broke the protocol (502)."""


class UpstreamTimeout(UpstreamError):
    """The target did not connect or answer in time (504)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where to connect: scheme, host, port and the TLS context (None for plain HTTP)."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    verified: bool = True

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.host, self.port, id(self.tls))


@dataclass(frozen=True, slots=True)
class Response:
    """A response head from the target."""

    status: int
    headers: Sequence[Header]


class TlsContexts:
    """SSL contexts per (verify, CA bundle), built once: loading trust stores is slow."""

    def __init__(self) -> None:
        self._contexts: dict[tuple[bool, str | None], ssl.SSLContext] = {}

    def get(self, *, verify: bool, ca_bundle: str | None) -> ssl.SSLContext:
        key = (verify, ca_bundle if verify else None)
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = _context(verify, ca_bundle)
        return context


def _context(verify: bool, ca_bundle: str | None) -> ssl.SSLContext:
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if ca_bundle is not None:
        context = ssl.create_default_context(cadata=ca_bundle)
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Connection:
    """One connection to a target, one exchange at a time."""

    def __init__(
        self,
        origin: Origin,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_header_bytes: int,
    ) -> None:
        self.origin, self.reader, self.writer = origin, reader, writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
        self.idle_since = 0.0

    async def send_head(self, method: bytes, target: bytes, headers: Sequence[Header]) -> None:
        self._write(h11.Request(method=method, target=target, headers=list(headers)))
        await self.writer.drain()

    async def send_body(self, data: bytes) -> None:
        if data:
            self._write(h11.Data(data=data))
            await self.writer.drain()

    async def end_body(self) -> None:
        self._write(h11.EndOfMessage())
        await self.writer.drain()

    def _write(self, event: h11.Event) -> None:
        try:
            data = self.h11.send(event)
        except h11.LocalProtocolError as error:
            raise UpstreamError(f"request not sendable: {error}") from None
        if data:
            self.writer.write(data)

    async def response(self, timeout: float) -> Response:
        """The next final response head (1xx interim responses are skipped). ``timeout``
        bounds the whole wait, interim responses included: each one restarted it, so a
        target sending ``100 Continue`` every few seconds held the exchange for ever."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise UpstreamTimeout("the target sent no final response in time")
            event = await self.next_event(left)
            if isinstance(event, h11.Response):
                return Response(event.status_code, event.headers)
            if not isinstance(event, h11.InformationalResponse):
                raise UpstreamError("the target sent no response")

    async def body(self, timeout: float) -> AsyncIterator[bytes]:
        """The response body, chunk by chunk, as it arrives."""
        while True:
            event = await self.next_event(timeout)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise UpstreamError("the target broke the response framing")

    async def next_event(self, timeout: float) -> h11.Event:
        """The next h11 event of the target's answer, reading as needed (``timeout`` a read)."""
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as error:
                # h11 quotes the offending bytes after a colon ("illegal header line: ..."):
                # they may hold the injected credential (a Location built from it), and this
                # text reaches the agent's 502 and the audit trail. Only its fixed part does.
                what = str(error).partition(":")[0].strip()[:80] or "malformed"
                raise UpstreamError(f"invalid response: {what}") from None
            if event is not h11.NEED_DATA:
                assert not isinstance(event, type)  # PAUSED is handled by reuse()
                return event
            try:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(READ_CHUNK)
            except TimeoutError:
                raise UpstreamTimeout("the target did not answer in time") from None
            except OSError as error:
                raise UpstreamError(f"connection to the target failed: {error}") from None
            self.h11.receive_data(data)

    def reusable(self) -> bool:
        """Whether the exchange ended cleanly and the connection can take another."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            with contextlib.suppress(h11.LocalProtocolError):
                self.h11.start_next_cycle()
        idle = self.h11.our_state is h11.IDLE and self.h11.their_state is h11.IDLE
        return idle and not self.unsolicited()

    def unsolicited(self) -> bool:
        """Whether the target sent bytes no request asked for (read or buffered unread)."""
        # StreamReader has no public way to look at its buffer without consuming it.
        buffered: bytearray = getattr(self.reader, "_buffer", bytearray())
        return bool(self.h11.trailing_data[0]) or bool(buffered)

    def close(self) -> None:
        self.writer.close()


class UpstreamPool:
    """Keep-alive connections to targets, by origin."""

    def __init__(
        self,
        *,
        pool_size: int = 32,
        idle_timeout: float = 30.0,
        max_header_bytes: int = 32768,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._size, self._idle_timeout = pool_size, idle_timeout
        self._max_header_bytes = max_header_bytes
        self._clock = clock
        self._idle: dict[tuple[str, int, int], list[Connection]] = {}

    async def connect(self, origin: Origin, timeout: float) -> tuple[Connection, bool]:
        """A connection to ``origin`` and whether it was reused from the pool."""
        idle = self._idle.get(origin.key)
        now = self._clock()
        while idle:
            connection = idle.pop()
            fresh = now - connection.idle_since < self._idle_timeout
            if fresh and not _closed(connection) and not connection.unsolicited():
                return connection, True
            connection.close()
        return await self._open(origin, timeout), False

    async def open_fresh(self, origin: Origin, timeout: float) -> Connection:
        """A new connection to ``origin``, never from the pool (WebSocket tunnels)."""
        return await self._open(origin, timeout)

    async def _open(self, origin: Origin, timeout: float) -> Connection:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    origin.host, origin.port, ssl=origin.tls, limit=READ_CHUNK * 2
                )
        except TimeoutError:
            raise UpstreamTimeout("connecting to the target timed out") from None
        except ssl.SSLError as error:
            raise UpstreamError(f"TLS with the target failed: {error.reason}") from None
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise UpstreamError(f"cannot connect to the target: {reason}") from None
        return Connection(origin, reader, writer, self._max_header_bytes)

    def release(self, connection: Connection) -> None:
        """Return ``connection`` to the pool when reusable, else close it."""
        idle = self._idle.setdefault(connection.origin.key, [])
        if len(idle) < self._size and connection.reusable() and not _closed(connection):
            connection.idle_since = self._clock()
            idle.append(connection)
        else:
            connection.close()

    async def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


def _closed(connection: Connection) -> bool:
    return connection.writer.is_closing() or connection.reader.at_eof()
