"""A real WebSocket upstream on loopback (the ``websockets`` library), plain or TLS.

Every path echoes each message back (text as text, binary as binary), except:

* ``/leak``: accepts, and its 101 answer carries the request's ``Authorization`` header
  in ``X-Leak`` (a broken target: the broker must not pass it on);
* ``/reject``: refuses the upgrade with ``403 upstream says no``;
* ``/greet``: sends ``hello`` first, then echoes;
* ``/headers``: sends the request's headers as a text message first, then echoes;
* ``/binary``: sends the request's ``Authorization`` value as a binary message first;
* ``/fragments``: sends it cut across three fragments of one text message (``tail`` ends
  it), then echoes;
* ``/close``: closes at once with the value (without ``Bearer``) as the close reason.

It records the request head of every handshake, and counts open connections.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol


@dataclass
class WsUpstream:
    tls: ssl.SSLContext | None = None
    seen: list[tuple[str, Headers]] = field(default_factory=list)
    open: int = 0
    closed: threading.Event = field(default_factory=threading.Event)

    def start(self) -> WsUpstream:
        self.server: Server = serve(
            self._handle, "127.0.0.1", 0, ssl=self.tls, max_size=None,
            process_request=self._request, process_response=self._response,
            select_subprotocol=_select, ping_interval=None,
        )  # fmt: skip
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)

    def _request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.seen.append((request.path, request.headers))
        if request.path == "/reject":
            return connection.respond(403, "upstream says no\n")
        return None

    def _response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> Response | None:
        if request.path == "/leak" and "Authorization" in request.headers:
            response.headers["X-Leak"] = request.headers["Authorization"]
        return None

    def _handle(self, connection: ServerConnection) -> None:
        self.open += 1
        self.closed.clear()
        try:
            request = connection.request
            assert request is not None
            auth = request.headers.get("Authorization", "")
            if request.path == "/greet":
                connection.send("hello")
            elif request.path == "/headers":
                connection.send(str(request.headers))
            elif request.path == "/binary":
                connection.send(b"\x00" + auth.encode() + b"\xff")
            elif request.path == "/fragments":
                cut = len(auth) // 2
                connection.send(
                    ["got: " + auth[: cut - 3], auth[cut - 3 : cut], auth[cut:] + " tail"]
                )
            elif request.path == "/close":
                connection.close(1000, auth.removeprefix("Bearer "))
            for message in connection:
                connection.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.open -= 1
            self.closed.set()


def _select(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """The first of ``chat.v2``, ``chat.v1`` the client offers; none when it offers none."""
    for mine in ("chat.v2", "chat.v1"):
        if mine in offered:
            return Subprotocol(mine)
    return None
