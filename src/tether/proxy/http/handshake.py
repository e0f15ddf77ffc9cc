"""The WebSocket handshake as the broker checks it (RFC 6455 section 4): the agent's upgrade
request before anything is sent, and the target's answer before the tunnel opens.

Security decisions:

* **A request the broker cannot tunnel exactly is refused** (400): not a ``GET``, a body
  (``Content-Length`` other than 0, any ``Transfer-Encoding``), or not exactly one
  ``Sec-WebSocket-Key``.
* **Only a real WebSocket handshake opens a tunnel**: the target's 101 must name
  ``Upgrade: websocket`` and carry the one ``Sec-WebSocket-Accept`` derived from the
  agent's key. A target that answered 101 without switching would otherwise let the agent
  send raw HTTP requests on a connection the policy never decided (smuggling through the
  tunnel). Any other 1xx is skipped; a final answer is returned to be relayed.
* **No extension when the credential is masked in frames**: an extension such as
  ``permessage-deflate`` codes the payloads, whose bytes are then not the secret's
  (:mod:`tether.proxy.http.wsframes`), so :func:`without_extensions` drops the agent's
  ``Sec-WebSocket-Extensions`` (under either spelling, ``_`` or ``-``), and
  :func:`extensions` finds a 101 that selects one anyway (the broker answers 502).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from typing import Final

import h11
from starlette.types import Scope

from tether.proxy.http.upstream import Connection, Response, UpstreamError

_ACCEPT_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_EXTENSIONS: Final = b"sec-websocket-extensions"
Header = tuple[bytes, bytes]


class BadUpgrade(Exception):
    """The upgrade request cannot be tunnelled as sent (400)."""


def check(scope: Scope) -> bytes:
    """The ``Sec-WebSocket-Accept`` the target must answer; BadUpgrade when the request
    cannot be tunnelled."""
    if scope["method"] != "GET":
        raise BadUpgrade("a WebSocket upgrade is a GET request")
    keys: list[bytes] = []
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            raise BadUpgrade("a WebSocket upgrade request has no body")
        if name == b"sec-websocket-key":
            keys.append(value.strip())
    if len(keys) != 1 or not keys[0]:
        raise BadUpgrade("a WebSocket upgrade carries one Sec-WebSocket-Key")
    return accept_for(keys[0])


def accept_for(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for ``Sec-WebSocket-Key: key`` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID, usedforsecurity=False).digest())


def without_extensions(headers: Iterable[Header]) -> list[Header]:
    """The upgrade request's headers offering no extension."""
    return [(n, v) for n, v in headers if n.lower().replace(b"_", b"-") != _EXTENSIONS]


def extensions(headers: Iterable[Header]) -> str | None:
    """The extensions a 101 selects (``Sec-WebSocket-Extensions``), or None."""
    chosen = [v.strip() for n, v in headers if n.lower() == _EXTENSIONS and v.strip()]
    return b", ".join(chosen).decode("latin-1") if chosen else None


async def answer(connection: Connection, timeout: float, accept: bytes) -> Response:
    """The target's WebSocket 101, or its final answer; other interim answers are skipped."""
    while True:
        event = await connection.next_event(timeout)
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            upgrade = {v.strip().lower() for n, v in event.headers if n == b"upgrade"}
            if upgrade != {b"websocket"}:
                raise UpstreamError("the target switched to another protocol")
            accepted = [v.strip() for n, v in event.headers if n == b"sec-websocket-accept"]
            if accepted != [accept]:
                raise UpstreamError("the target's 101 is not an answer to this handshake")
            return Response(101, event.headers)
        if isinstance(event, h11.Response):
            return Response(event.status_code, event.headers)
        if not isinstance(event, h11.InformationalResponse):
            raise UpstreamError("the target sent no response")
