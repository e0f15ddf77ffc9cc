"""Cutting byte streams into protocol messages (sans-IO).

:class:`FrontendDecoder` turns the bytes a client sends into frontend messages; ``feed``
returns whole messages only (each with its raw bytes) and keeps a partial one buffered.
:class:`BackendFramer` splits what a server sends into ``(type, body, raw)`` frames without
decoding them, so that ``DataRow`` and the other result messages go through as the bytes
they arrived as.

Security decisions: a frame's declared length is checked against its type's limit
(:mod:`tether.proxy.pg.codec`) before any byte of its body is buffered, so a peer cannot make
the broker hold more than one limit's worth of input; a bad length is a
:class:`~tether.proxy.pg.codec.ProtocolViolation`. After an ``SSLRequest`` or
``GSSENCRequest`` the decoder stops: what follows is a TLS handshake (or a new startup
packet), never more messages of the same read.
"""

from __future__ import annotations

from tether.proxy.pg.codec import (
    DEFAULT_MAX_MESSAGE,
    MAX_PASSWORD_MESSAGE,
    MAX_SMALL_MESSAGE,
    MAX_STARTUP_PACKET,
    SMALL_TYPES,
    FrontendMessage,
    GSSENCRequest,
    ProtocolViolation,
    SSLRequest,
    StartupPacket,
    decode_frontend,
    decode_startup,
)
from tether.proxy.pg.fields import I32


class FrontendDecoder:
    """Bytes from a client in, whole messages out; the first packet has no type byte."""

    def __init__(self, *, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        self._startup = True
        self._max = max_message

    def expect_startup(self) -> None:
        """The next packet is a startup-phase packet again (after an SSL or GSS answer)."""
        self._startup = True

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def take_buffer(self) -> bytes:
        """Unread bytes (e.g. sent before the TLS handshake, which must be refused)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def feed(self, data: bytes) -> list[tuple[StartupPacket | FrontendMessage, bytes]]:
        """Every whole packet now buffered, each with its raw bytes."""
        self._buffer += data
        out: list[tuple[StartupPacket | FrontendMessage, bytes]] = []
        while True:
            item = self._next()
            if item is None:
                return out
            out.append(item)
            if isinstance(item[0], SSLRequest | GSSENCRequest):
                return out  # what follows is TLS (or a retry), not more packets

    def _next(self) -> tuple[StartupPacket | FrontendMessage, bytes] | None:
        buf = self._buffer
        if self._startup:
            if len(buf) < 4:
                return None
            (length,) = I32.unpack_from(buf, 0)
            if length < 8 or length > MAX_STARTUP_PACKET:
                raise ProtocolViolation("invalid startup packet length")
            if len(buf) < length:
                return None
            raw = bytes(buf[:length])
            del buf[:length]
            packet = decode_startup(raw[4:])
            self._startup = False
            return packet, raw
        if len(buf) < 5:
            return None
        kind = buf[0]
        (length,) = I32.unpack_from(buf, 1)
        limit = MAX_PASSWORD_MESSAGE if kind == 0x70 else self._max
        if kind in SMALL_TYPES:
            limit = MAX_SMALL_MESSAGE
        if length < 4 or length > limit:
            raise ProtocolViolation(f"invalid length for message type {bytes([kind])!r}")
        if len(buf) < length + 1:
            return None
        raw = bytes(buf[: length + 1])
        del buf[: length + 1]
        return decode_frontend(kind, raw[5:]), raw


class BackendFramer:
    """Bytes from a server in, ``(type, body, raw)`` frames out, bodies undecoded."""

    def __init__(self, *, max_message: int = 1 << 30) -> None:
        self._buffer = bytearray()
        self._max = max_message

    def feed(self, data: bytes) -> list[tuple[int, bytes, bytes]]:
        buf = self._buffer
        buf += data
        out: list[tuple[int, bytes, bytes]] = []
        pos, size = 0, len(buf)
        while size - pos >= 5:
            kind = buf[pos]
            (length,) = I32.unpack_from(buf, pos + 1)
            if length < 4 or length > self._max:
                raise ProtocolViolation(f"invalid length for server message {bytes([kind])!r}")
            end = pos + 1 + length
            if end > size:
                break
            raw = bytes(buf[pos:end])
            out.append((kind, raw[5:], raw))
            pos = end
        del buf[:pos]
        return out

    def take_buffer(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data
