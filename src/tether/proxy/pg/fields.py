"""PostgreSQL wire protocol v3: the fields messages are made of, read strictly (sans-IO).

Both directions share these: :class:`FieldReader` reads the fields of one message body
(frontend messages in :mod:`tether.proxy.pg.codec`, backend ones in
:mod:`tether.proxy.pg.backend`), :func:`cstr` and :func:`frame` write them.

Security decisions: a body that ends inside a field, bytes after the last field, a string
without its terminator, text that is not UTF-8, or a count that is negative raise
:class:`ProtocolViolation` (SQLSTATE ``08P01``, the connection ends); nothing is guessed.
Writing a string that holds NUL is a ``ValueError`` (it would end the field early).
"""

from __future__ import annotations

import struct
from typing import Final

I32: Final = struct.Struct("!i")
I16: Final = struct.Struct("!h")


class ProtocolViolation(Exception):
    """Input that is not a valid protocol message: SQLSTATE 08P01, the connection ends."""

    sqlstate: Final = "08P01"


class FieldReader:
    """Reads the fields of one message body; any overrun or leftover is a violation."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def int32(self) -> int:
        return self._integer(I32, "an Int32")

    def int16(self) -> int:
        return self._integer(I16, "an Int16")

    def _integer(self, layout: struct.Struct, name: str) -> int:
        end = self._pos + layout.size
        if end > len(self._data):
            raise ProtocolViolation(f"message ends inside {name}")
        (value,) = layout.unpack_from(self._data, self._pos)
        self._pos = end
        return int(value)

    def count(self) -> int:
        value = self.int16()
        if value < 0:
            raise ProtocolViolation("negative count")
        return value

    def byte(self) -> int:
        if self._pos >= len(self._data):
            raise ProtocolViolation("message ends inside a Byte1")
        value = self._data[self._pos]
        self._pos += 1
        return value

    def raw(self, size: int) -> bytes:
        end = self._pos + size
        if size < 0 or end > len(self._data):
            raise ProtocolViolation("message ends inside a field")
        value = self._data[self._pos : end]
        self._pos = end
        return value

    def cstring(self) -> str:
        end = self._data.find(b"\x00", self._pos)
        if end < 0:
            raise ProtocolViolation("string without its terminator")
        value = _text(self._data[self._pos : end])
        self._pos = end + 1
        return value

    def rest(self) -> bytes:
        value = self._data[self._pos :]
        self._pos = len(self._data)
        return value

    def done(self) -> None:
        if self._pos != len(self._data):
            raise ProtocolViolation("bytes after the message's last field")


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation("text that is not UTF-8") from None


def cstr(value: str) -> bytes:
    data = value.encode("utf-8")
    if b"\x00" in data:
        raise ValueError("a protocol string cannot hold NUL")
    return data + b"\x00"


def frame(kind: bytes, body: bytes) -> bytes:
    """One typed message: type byte, Int32 length (itself included), body."""
    return kind + I32.pack(len(body) + 4) + body


def reader(body: bytes) -> FieldReader:
    """A strict field reader over a message body."""
    return FieldReader(body)


def int32(value: int) -> bytes:
    return I32.pack(value)


def int16(value: int) -> bytes:
    return I16.pack(value)
