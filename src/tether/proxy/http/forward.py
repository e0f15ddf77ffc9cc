"""One allowed request forwarded to its target and the response streamed back (ASGI side).

Bodies stream both ways in constant memory: one chunk at a time, and each side's flow
control (``drain`` towards the target, uvicorn's ``send`` towards the agent) holds the
other back, so a 1 GB transfer uses the memory of a chunk.

Security decisions:

* **Only what was decided is sent**: the method, the request target the engine saw (the
  target's base path in front) and the filtered headers; nothing is re-encoded.
* **Limits fail closed**: a body over the target's ``max_request_body`` is refused (413,
  from ``Content-Length`` before connecting, or as soon as the count passes it); a client
  that stops sending (``client_body_timeout``) or reading (``client_send_timeout``) is cut
  off; after the response has started, any failure aborts the connection, so the agent sees
  a truncated response, never one that looks complete.
* **Live checks**: at least every ``live_check_interval`` seconds of a transfer the token is
  re-checked (``IdentityService.check_live``), so a revocation ends a long transfer too
  (also between the pieces one chunk of a coded answer decodes to).
* **Retry only what may be repeated**: an idempotent request (RFC 9110 section 9.2.2:
  ``GET``, ``HEAD``, ``OPTIONS``, ``TRACE``, ``PUT``, ``DELETE``) without a body that fails
  on a reused keep-alive connection (the target may have closed the idle connection) is
  sent once more on a new one. Nothing else is ever
  retried: not a timeout (the target has the request and may be acting on it), and never a
  ``POST`` or ``PATCH``, which the target may have carried out before the connection failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from starlette.types import Message, Receive, Send

from tether.proxy.http.decode import BodyDecoder
from tether.proxy.http.headers import TargetBase
from tether.proxy.http.scrub import Scrubber
from tether.proxy.http.upstream import (
    Connection,
    Header,
    Origin,
    Response,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
)

LIVE_CHECK_INTERVAL: Final = 1.0
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class BodyTooLarge(Exception):
    """The request body passed the target's limit (413)."""


class ClientGone(Exception):
    """The agent disconnected or stalled; nothing more can be sent to it."""


class ClientStalled(ClientGone):
    """The agent stopped sending its request body (408 when nothing was answered yet)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """How to reach one target (built from its spec, cached while the spec is unchanged)."""

    origin: Origin
    base_path: str  # the base URL's path without its trailing '/', '' for none
    host: bytes
    connect_timeout: float
    read_timeout: float
    max_body: int | None

    @property
    def base(self) -> TargetBase:
        """The target's base URL, to map its redirects back to the agent's paths."""
        scheme = "http" if self.origin.tls is None else "https"
        path = self.base_path.encode("latin-1")
        return TargetBase(scheme, self.origin.host.lower(), self.origin.port, path)


@dataclass(slots=True)
class Outcome:
    """What happened to one forwarded request (for the audit event)."""

    status: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    response_headers: Sequence[Header] = ()
    error: str | None = None
    started: bool = False  # the response head went to the agent
    reused: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    body_timeout: float
    send_timeout: float


class Forwarder:
    """Moves one exchange; ``live`` raises when the agent's token stopped being valid."""

    def __init__(
        self,
        pool: UpstreamPool,
        plan: Plan,
        limits: ClientLimits,
        live: Callable[[], Awaitable[None]],
    ) -> None:
        self.pool, self.plan, self.limits, self.live = pool, plan, limits, live
        self._checked = time.monotonic()

    async def open(
        self, method: bytes, target: bytes, headers: list[Header], receive: Receive, out: Outcome
    ) -> tuple[Connection, Response]:
        """Send the request (head and body) and read the response head."""
        first = await self._receive(receive)
        body, more = first.get("body", b""), first.get("more_body", False)
        # Never both framings (RFC 9112 section 6.1): a body the agent framed with
        # Content-Length keeps it (h11 holds the count to it), any other body goes chunked.
        sized = any(n == b"content-length" for n, _ in headers)
        if (more or body) and not sized:
            headers = [*headers, (b"transfer-encoding", b"chunked")]
        self._count_in(len(body), out)
        head = [(b"host", self.plan.host), *headers]
        path = self.plan.base_path.encode("latin-1") + target
        retry = not more and not body and method in IDEMPOTENT
        for attempt in (0, 1):
            connection, out.reused = await self.pool.connect(
                self.plan.origin, self.plan.connect_timeout
            )
            try:
                await connection.send_head(method, path, head)
                await connection.send_body(body)
                if more:
                    await self._pump_request(connection, receive, out)
                await connection.end_body()
                return connection, await connection.response(self.plan.read_timeout)
            except (UpstreamError, OSError) as error:
                connection.close()
                timeout = isinstance(error, TimeoutError | UpstreamTimeout)
                if attempt or not retry or not out.reused or timeout:
                    raise _as_upstream(error) from None
            except BaseException:
                connection.close()
                raise
        raise UpstreamError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _pump_request(self, connection: Connection, receive: Receive, out: Outcome) -> None:
        while True:
            message = await self._receive(receive)
            chunk = message.get("body", b"")
            self._count_in(len(chunk), out)
            await connection.send_body(chunk)
            await self._tick()
            if not message.get("more_body", False):
                return

    async def _receive(self, receive: Receive) -> Message:
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                message = await receive()
        except TimeoutError:
            raise ClientStalled("the agent stopped sending the request body") from None
        if message["type"] == "http.disconnect":
            raise ClientGone("the agent disconnected")
        return message

    def _count_in(self, size: int, out: Outcome) -> None:
        out.bytes_in += size
        if self.plan.max_body is not None and out.bytes_in > self.plan.max_body:
            raise BodyTooLarge

    async def stream_response(
        self,
        connection: Connection,
        send: Send,
        headers: list[Header],
        out: Outcome,
        scrubber: Scrubber | None = None,
        decoder: BodyDecoder | None = None,
    ) -> None:
        """The response body to the agent (decoded by ``decoder`` when the target coded it,
        the credential masked by ``scrubber`` when one was injected); the connection goes
        back to the pool when whole."""
        await self._send(send, {"type": "http.response.start", "status": out.status,
                                "headers": headers})  # fmt: skip
        out.started = True
        try:
            async for chunk in connection.body(self.plan.read_timeout):
                if decoder is None:
                    await self._send_body(send, chunk, out, scrubber)
                    await self._tick()
                    continue
                for piece in decoder.feed(chunk):  # a small chunk may decode to a lot
                    await self._send_body(send, piece, out, scrubber)
                    await self._tick()
            if decoder is not None:
                decoder.finish()
        except BaseException:
            connection.close()
            raise
        last = b"" if scrubber is None else scrubber.flush()
        out.bytes_out += len(last)
        await self._send(send, {"type": "http.response.body", "body": last, "more_body": False})
        self.pool.release(connection)

    async def _send_body(
        self, send: Send, chunk: bytes, out: Outcome, scrubber: Scrubber | None
    ) -> None:
        if scrubber is not None:
            chunk = scrubber.feed(chunk)
        if chunk:
            out.bytes_out += len(chunk)
            await self._send(send, {"type": "http.response.body", "body": chunk,
                                    "more_body": True})  # fmt: skip

    async def _send(self, send: Send, message: Message) -> None:
        try:
            async with asyncio.timeout(self.limits.send_timeout):
                await send(message)
        except TimeoutError:
            raise ClientGone("the agent stopped reading the response") from None
        except OSError as error:
            raise ClientGone(f"the agent's connection failed: {error}") from None

    async def _tick(self) -> None:
        now = time.monotonic()
        if now - self._checked >= LIVE_CHECK_INTERVAL:
            self._checked = now
            await self.live()


def _as_upstream(error: Exception) -> UpstreamError:
    if isinstance(error, UpstreamError):
        return error
    return UpstreamError(f"connection to the target failed: {type(error).__name__}")
