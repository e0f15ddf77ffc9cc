"""The node's side of WebSocket upgrades: one request served as HTTP, then maybe a raw tunnel.

uvicorn's h11 protocol hands a request carrying ``Connection: upgrade`` and ``Upgrade:
websocket`` to the ``ws`` protocol class of its configuration, replaying the request head
it parsed. The node configures :class:`UpgradeProtocol` there, not a WebSocket
implementation: it parses that head again and runs the node's ASGI application with it as
an ordinary ``http`` scope, so the broker authenticates, decides and audits it like any
request (and the API answers it like any request). The scope carries the extension
``tether.upgrade``, an :class:`Upgrade`: only the broker, once the policy allowed the
request and the target agreed, calls :meth:`Upgrade.accept` to answer ``101`` and take the
raw connection (:mod:`tether.proxy.http.websocket`).

Security decisions:

* **One request per connection.** Any answer other than 101 goes out with ``Connection:
  close`` and the connection is closed after it, so nothing else is ever read as HTTP from
  a connection whose request asked to switch protocols.
* **Nothing switches before the application says so**, and only after the whole request
  was read; the bytes the agent sent after the request head go to the tunnel, never to an
  HTTP parser. An application response cannot switch (an ``http.response.start`` below 200
  is an error); only :meth:`Upgrade.accept` can.
* **The ASGI ``tls`` extension** is set from the TLS connection exactly as for ordinary
  requests (:func:`tether.proxy.http.tlsserver.tls_extension`), so certificate-bound
  tokens work on upgrades too.
* **Shutdown ends tunnels**: uvicorn's ``shutdown()`` sets :attr:`Upgrade.stopping`, which
  the tunnel watches; the connection then closes and the end is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import unquote

import h11
from starlette.types import Message
from uvicorn.config import Config
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

from tether.proxy.http.tlsserver import tls_extension

log = logging.getLogger(__name__)

EXTENSION: Final = "tether.upgrade"
READ_CHUNK: Final = 65536
DEFAULT_MAX_HEAD: Final = 16 * 1024  # h11's own default
Header = tuple[bytes, bytes]
_DISCONNECT: Final[Message] = {"type": "http.disconnect"}
_ERROR: Final = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)


@dataclass(frozen=True, slots=True)
class Switched:
    """The agent's connection after the 101: its streams and the bytes it sent early."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    early: bytes


class Upgrade:
    """One upgrade request on its own connection (the ASGI extension ``tether.upgrade``)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_head: int,
        gone: asyncio.Event,
        stopping: asyncio.Event,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self.gone, self.stopping = gone, stopping
        self.body_done = self.started = self.complete = False

    async def head(self) -> h11.Request | None:
        """The request head (None when it is malformed or the agent left)."""
        try:
            event = await self._next()
        except (h11.RemoteProtocolError, OSError):
            return None
        return event if isinstance(event, h11.Request) else None

    async def _next(self) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                assert not isinstance(event, type)  # PAUSED: only after the whole request
                return event
            self.h11.receive_data(await self.reader.read(READ_CHUNK))

    # --- ASGI ------------------------------------------------------------------------------

    async def receive(self) -> Message:
        if not self.body_done:
            try:
                event = await self._next()
            except (h11.RemoteProtocolError, OSError):
                event = h11.ConnectionClosed()
            if isinstance(event, h11.Data):
                return {"type": "http.request", "body": bytes(event.data), "more_body": True}
            self.body_done = True
            if isinstance(event, h11.EndOfMessage):
                return {"type": "http.request", "body": b"", "more_body": False}
            return _DISCONNECT
        await self.gone.wait()
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            status = int(message["status"])
            if self.started or status < 200:
                raise RuntimeError(f"cannot start a {status} response here")
            headers = [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers", ())]
            headers = [(n, v) for n, v in headers if n != b"connection"]
            headers.append((b"connection", b"close"))
            self._write(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
            self.started = True
        elif kind == "http.response.body":
            if not self.started or self.complete:
                raise RuntimeError("response body outside a response")
            body = bytes(message.get("body", b""))
            if body:
                self._write(h11.Data(data=body))
            if not message.get("more_body", False):
                self._write(h11.EndOfMessage())
                self.complete = True
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        await self.writer.drain()
        if self.complete:
            self.gone.set()

    def _write(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            self.writer.write(data)

    # --- the switch ------------------------------------------------------------------------

    async def accept(self, headers: list[Header]) -> Switched:
        """Answer 101 with ``headers`` (the upgrade headers are added) and hand over the
        connection. Raises ``OSError`` when the agent left, ``ValueError`` when the request
        had a body or was not an upgrade."""
        if self.started:
            raise RuntimeError("the response has started")
        while not self.body_done:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ConnectionResetError("the agent left before the switch")
            if message.get("body"):
                raise ValueError("an upgrade request has no body")
        switching = [*headers, (b"connection", b"upgrade"), (b"upgrade", b"websocket")]
        try:
            self._write(
                h11.InformationalResponse(
                    status_code=101, reason=b"Switching Protocols", headers=switching
                )
            )
        except h11.LocalProtocolError:
            raise ValueError("the request did not ask to switch protocols") from None
        self.started = True
        await self.writer.drain()
        early, _closed = self.h11.trailing_data
        return Switched(self.reader, self.writer, bytes(early))


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


class UpgradeProtocol(asyncio.StreamReaderProtocol):
    """uvicorn's ``ws`` protocol class: serves the upgrade request (see the module)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
    ) -> None:
        super().__init__(asyncio.StreamReader(limit=READ_CHUNK * 2), self._connected)
        self.config, self.server_state, self.app_state = config, server_state, app_state
        self.gone, self.stopping = asyncio.Event(), asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self.gone.set()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """uvicorn stops: the tunnel (or the request) ends."""
        self.stopping.set()

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        max_head = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_HEAD
        upgrade = Upgrade(reader, writer, max_head, self.gone, self.stopping)
        try:
            request = await upgrade.head()
            if request is not None:
                await self._run(upgrade, request)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _run(self, upgrade: Upgrade, request: h11.Request) -> None:
        assert self.transport is not None
        raw_path, _, query = bytes(request.target).partition(b"?")
        extensions: dict[str, Any] = {EXTENSION: upgrade}
        tls = tls_extension(self.transport)
        if tls is not None:
            extensions["tls"] = tls
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version.decode("ascii"),
            "server": get_local_addr(self.transport),
            "client": get_remote_addr(self.transport),
            "scheme": "https" if is_ssl(self.transport) else "http",
            "method": request.method.decode("ascii"),
            "root_path": self.config.root_path,
            "path": self.config.root_path + unquote(raw_path.decode("ascii")),
            "raw_path": self.config.root_path.encode("ascii") + raw_path,
            "query_string": query,
            "headers": [(bytes(n).lower(), bytes(v)) for n, v in request.headers],
            "state": self.app_state.copy(),
            "extensions": extensions,
        }
        try:
            await self.config.loaded_app(scope, upgrade.receive, upgrade.send)
        except OSError:
            log.debug("the agent left during an upgrade request")
        except Exception:
            log.exception("upgrade request failed")
            if not upgrade.started:
                with contextlib.suppress(OSError):
                    upgrade.writer.write(_ERROR)
        else:
            if not upgrade.started:
                upgrade.writer.write(_ERROR)
