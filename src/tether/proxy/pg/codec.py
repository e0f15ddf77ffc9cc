"""PostgreSQL wire protocol v3: the frontend messages the broker reads or writes (sans-IO).

Byte streams are cut into messages by :mod:`tether.proxy.pg.framing`; this module decodes
and encodes one message from its fields (:mod:`tether.proxy.pg.fields`, whose
:class:`ProtocolViolation` it re-exports). Backend messages are in
:mod:`tether.proxy.pg.backend`. Every message class has ``encode()``; ``decode(encode(m))
== m`` and, for accepted input, ``encode(decode(raw)) == raw`` (property tests), so the raw
bytes a broker forwards are exactly the message it checked.

Security decisions:

* **Strict, or a** :class:`ProtocolViolation` (SQLSTATE ``08P01``). A length below 4 or
  above its type's limit, a body that ends inside a field, bytes after the last field, a
  string without its terminator, text that is not UTF-8, an unknown message type, a count
  that is negative: all raise, and the connection ends. Nothing is ever passed on from a
  message that did not decode whole.
* **Limits.** The startup packet is at most 10,000 bytes (PostgreSQL's own limit); the
  fixed-size messages (``Sync``, ``Flush``, ``Terminate``, ``CopyDone``, ``Describe``,
  ``Close``, ``Execute``) at most 10,000; ``PasswordMessage`` at most
  :data:`MAX_PASSWORD_MESSAGE`; every other message at most the decoder's ``max_message``.
  A frame's declared length is checked before any byte of its body is buffered, so a
  client cannot make the broker hold more than one limit's worth of input.
* **Text is UTF-8.** The broker runs every session with ``client_encoding=UTF8``
  (:mod:`tether.proxy.pg.session`); text that is not valid UTF-8 cannot be what the
  policy parsed, so it is a violation, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tether.proxy.pg.fields import I16, I32, FieldReader, cstr
from tether.proxy.pg.fields import ProtocolViolation as ProtocolViolation
from tether.proxy.pg.fields import frame as frame
from tether.proxy.pg.fields import reader as reader

MAX_STARTUP_PACKET: Final = 10_000
MAX_SMALL_MESSAGE: Final = 10_000
MAX_PASSWORD_MESSAGE: Final = 16_384
DEFAULT_MAX_MESSAGE: Final = 16 << 20
PROTOCOL_3_0: Final = 196608
SSL_REQUEST_CODE: Final = 80877103
GSSENC_REQUEST_CODE: Final = 80877104
CANCEL_REQUEST_CODE: Final = 80877102
MAX_PARAMS: Final = 65535

SMALL_TYPES: Final = frozenset(b"SHXcDCE")  # at most MAX_SMALL_MESSAGE bytes (framing)


def _i16s(values: tuple[int, ...]) -> bytes:
    return I16.pack(len(values)) + b"".join(I16.pack(v) for v in values)


# --- startup-phase messages (no type byte) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    version: int
    params: tuple[tuple[str, str], ...]

    def encode(self) -> bytes:
        body = I32.pack(self.version)
        body += b"".join(cstr(k) + cstr(v) for k, v in self.params) + b"\x00"
        return I32.pack(len(body) + 4) + body

    def get(self, key: str) -> str | None:
        for name, value in self.params:
            if name == key:
                return value
        return None


@dataclass(frozen=True, slots=True)
class SSLRequest:
    def encode(self) -> bytes:
        return I32.pack(8) + I32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    def encode(self) -> bytes:
        return I32.pack(8) + I32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: bytes  # 4 bytes in protocol 3.0

    def encode(self) -> bytes:
        body = I32.pack(CANCEL_REQUEST_CODE) + I32.pack(self.process_id) + self.secret_key
        return I32.pack(len(body) + 4) + body


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def decode_startup(body: bytes) -> StartupPacket:
    """The packet after its length word (``body`` starts with the Int32 code)."""
    reader = FieldReader(body)
    code = reader.int32()
    if code == SSL_REQUEST_CODE:
        reader.done()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        reader.done()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        pid = reader.int32()
        key = reader.rest()
        if len(key) != 4:
            raise ProtocolViolation("a cancel request's key is 4 bytes")
        return CancelRequest(pid, key)
    if code >> 16 != 3:
        raise ProtocolViolation(f"unsupported protocol version {code >> 16}.{code & 0xFFFF}")
    params: list[tuple[str, str]] = []
    while True:
        name = reader.cstring()
        if not name:
            break
        params.append((name, reader.cstring()))
    reader.done()
    names = [n for n, _ in params]
    if len(set(names)) != len(names):
        raise ProtocolViolation("a startup parameter is given twice")
    return StartupMessage(code, tuple(params))


# --- frontend messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """``p``: a password, or a SASL initial response / response (the same type byte)."""

    data: bytes

    def encode(self) -> bytes:
        return frame(b"p", self.data)


@dataclass(frozen=True, slots=True)
class Query:
    text: str

    def encode(self) -> bytes:
        return frame(b"Q", cstr(self.text))


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    query: str
    param_types: tuple[int, ...] = ()

    def encode(self) -> bytes:
        types = I16.pack(len(self.param_types)) + b"".join(I32.pack(t) for t in self.param_types)
        return frame(b"P", cstr(self.name) + cstr(self.query) + types)


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        values = I16.pack(len(self.params)) + b"".join(
            I32.pack(-1) if v is None else I32.pack(len(v)) + v for v in self.params
        )
        body = cstr(self.portal) + cstr(self.statement) + _i16s(self.param_formats) + values
        return frame(b"B", body + _i16s(self.result_formats))


@dataclass(frozen=True, slots=True)
class Describe:
    kind: str  # "S" statement, "P" portal
    name: str

    def encode(self) -> bytes:
        return frame(b"D", self.kind.encode("ascii") + cstr(self.name))


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int = 0

    def encode(self) -> bytes:
        return frame(b"E", cstr(self.portal) + I32.pack(self.max_rows))


@dataclass(frozen=True, slots=True)
class Close:
    kind: str  # "S" statement, "P" portal
    name: str

    def encode(self) -> bytes:
        return frame(b"C", self.kind.encode("ascii") + cstr(self.name))


@dataclass(frozen=True, slots=True)
class Sync:
    def encode(self) -> bytes:
        return b"S\x00\x00\x00\x04"


@dataclass(frozen=True, slots=True)
class Flush:
    def encode(self) -> bytes:
        return b"H\x00\x00\x00\x04"


@dataclass(frozen=True, slots=True)
class Terminate:
    def encode(self) -> bytes:
        return b"X\x00\x00\x00\x04"


@dataclass(frozen=True, slots=True)
class CopyData:
    data: bytes

    def encode(self) -> bytes:
        return frame(b"d", self.data)


@dataclass(frozen=True, slots=True)
class CopyDone:
    def encode(self) -> bytes:
        return b"c\x00\x00\x00\x04"


@dataclass(frozen=True, slots=True)
class CopyFail:
    message: str

    def encode(self) -> bytes:
        return frame(b"f", cstr(self.message))


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """``F``: the fast-path function call; decoded only to be refused (it bypasses SQL)."""

    body: bytes

    def encode(self) -> bytes:
        return frame(b"F", self.body)


FrontendMessage = (
    PasswordMessage | Query | Parse | Bind | Describe | Execute | Close | Sync | Flush
    | Terminate | CopyData | CopyDone | CopyFail | FunctionCall
)  # fmt: skip


def _decode_parse(r: FieldReader) -> Parse:
    name, query = r.cstring(), r.cstring()
    types = tuple(r.int32() for _ in range(r.count()))
    return Parse(name, query, types)


def _decode_bind(r: FieldReader) -> Bind:
    portal, statement = r.cstring(), r.cstring()
    formats = tuple(r.int16() for _ in range(r.count()))
    values: list[bytes | None] = []
    for _ in range(r.count()):
        size = r.int32()
        if size < -1:
            raise ProtocolViolation("a parameter length below -1")
        values.append(None if size == -1 else r.raw(size))
    results = tuple(r.int16() for _ in range(r.count()))
    if any(f not in (0, 1) for f in (*formats, *results)):
        raise ProtocolViolation("a format code other than 0 (text) or 1 (binary)")
    if len(formats) not in (0, 1, len(values)):
        raise ProtocolViolation("parameter format codes do not match the parameters")
    return Bind(portal, statement, formats, tuple(values), results)


def _decode_target(r: FieldReader) -> tuple[str, str]:
    kind = chr(r.byte())
    if kind not in ("S", "P"):
        raise ProtocolViolation("Describe/Close of something other than S or P")
    return kind, r.cstring()


def _decode_execute(r: FieldReader) -> Execute:
    portal = r.cstring()
    max_rows = r.int32()
    if max_rows < 0:
        raise ProtocolViolation("a negative row limit")
    return Execute(portal, max_rows)


def decode_frontend(kind: int, body: bytes) -> FrontendMessage:
    """One typed frontend message from its type byte and body; strict."""
    r = FieldReader(body)
    message: FrontendMessage
    if kind == 0x51:  # Q
        message = Query(r.cstring())
    elif kind == 0x50:  # P
        message = _decode_parse(r)
    elif kind == 0x42:  # B
        message = _decode_bind(r)
    elif kind == 0x44:  # D
        message = Describe(*_decode_target(r))
    elif kind == 0x45:  # E
        message = _decode_execute(r)
    elif kind == 0x43:  # C
        message = Close(*_decode_target(r))
    elif kind == 0x53:  # S
        message = Sync()
    elif kind == 0x48:  # H
        message = Flush()
    elif kind == 0x58:  # X
        message = Terminate()
    elif kind == 0x64:  # d
        message = CopyData(r.rest())
    elif kind == 0x63:  # c
        message = CopyDone()
    elif kind == 0x66:  # f
        message = CopyFail(r.cstring())
    elif kind == 0x70:  # p
        message = PasswordMessage(r.rest())
    elif kind == 0x46:  # F
        message = FunctionCall(r.rest())
    else:
        raise ProtocolViolation(f"unknown frontend message type {bytes([kind])!r}")
    r.done()
    return message
