"""Backend (server-to-client) messages the broker writes, and the few it reads.

The broker writes authentication requests, ``ParameterStatus``, ``BackendKeyData``,
``ReadyForQuery``, ``ErrorResponse`` and ``NoticeResponse`` to clients. From a server it
reads authentication requests (as a client), ``ParameterStatus``, ``BackendKeyData``,
``ReadyForQuery``, ``CommandComplete`` and ``ErrorResponse``; everything else from the
server is forwarded as the bytes it arrived as
(:class:`~tether.proxy.pg.framing.BackendFramer`).
:func:`decode_backend` validates any backend message strictly (used by the property tests
and for the messages read); a malformed one is a
:class:`~tether.proxy.pg.codec.ProtocolViolation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tether.audit.events import MAX_COUNT
from tether.proxy.pg.fields import FieldReader, ProtocolViolation, cstr, frame, int32, reader

# Authentication request codes.
AUTH_OK: Final = 0
AUTH_CLEARTEXT: Final = 3
AUTH_MD5: Final = 5
AUTH_SASL: Final = 10
AUTH_SASL_CONTINUE: Final = 11
AUTH_SASL_FINAL: Final = 12

# Transaction status of ReadyForQuery.
IDLE: Final = "I"
IN_TRANSACTION: Final = "T"
FAILED_TRANSACTION: Final = "E"

# Message type bytes (as ints) the session machine looks at.
T_AUTH: Final = 0x52  # R
T_PARAMETER_STATUS: Final = 0x53  # S
T_KEY_DATA: Final = 0x4B  # K
T_READY: Final = 0x5A  # Z
T_ERROR: Final = 0x45  # E
T_NOTICE: Final = 0x4E  # N
T_NOTIFICATION: Final = 0x41  # A
T_COMMAND_COMPLETE: Final = 0x43  # C
T_EMPTY_QUERY: Final = 0x49  # I
T_PARSE_COMPLETE: Final = 0x31  # 1
T_BIND_COMPLETE: Final = 0x32  # 2
T_CLOSE_COMPLETE: Final = 0x33  # 3
T_NO_DATA: Final = 0x6E  # n
T_PORTAL_SUSPENDED: Final = 0x73  # s
T_ROW_DESCRIPTION: Final = 0x54  # T
T_PARAMETER_DESCRIPTION: Final = 0x74  # t
T_DATA_ROW: Final = 0x44  # D
T_COPY_IN: Final = 0x47  # G
T_COPY_OUT: Final = 0x48  # H
T_COPY_BOTH: Final = 0x57  # W
T_COPY_DATA: Final = 0x64  # d
T_COPY_DONE: Final = 0x63  # c
T_FUNCTION_RESULT: Final = 0x56  # V
T_NEGOTIATE: Final = 0x76  # v


@dataclass(frozen=True, slots=True)
class Authentication:
    code: int
    data: bytes = b""

    def encode(self) -> bytes:
        return frame(b"R", int32(self.code) + self.data)


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    name: str
    value: str

    def encode(self) -> bytes:
        return frame(b"S", cstr(self.name) + cstr(self.value))


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    process_id: int
    secret_key: bytes

    def encode(self) -> bytes:
        return frame(b"K", int32(self.process_id) + self.secret_key)


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    status: str

    def encode(self) -> bytes:
        return frame(b"Z", self.status.encode("ascii"))


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """``E`` (or ``N`` with ``notice=True``): fields by their one-letter codes."""

    fields: tuple[tuple[str, str], ...]
    notice: bool = False

    def encode(self) -> bytes:
        body = b"".join(k.encode("ascii") + cstr(v) for k, v in self.fields) + b"\x00"
        return frame(b"N" if self.notice else b"E", body)

    def get(self, code: str) -> str | None:
        for key, value in self.fields:
            if key == code:
                return value
        return None

    @property
    def sqlstate(self) -> str | None:
        return self.get("C")


@dataclass(frozen=True, slots=True)
class CommandComplete:
    tag: str

    def encode(self) -> bytes:
        return frame(b"C", cstr(self.tag))

    @property
    def rows(self) -> int | None:
        """Rows returned or affected, from the tag (``SELECT 3``, ``INSERT 0 2``...); None
        when the tag holds none, or one no count column can hold (ASCII digits only: the
        tag comes from the target, and ``int`` refuses other digits ``isdigit`` accepts)."""
        last = self.tag.rpartition(" ")[2]
        if " " not in self.tag or not last.isascii() or not last.isdigit() or len(last) > 19:
            return None
        rows = int(last)
        return rows if rows <= MAX_COUNT else None


def error(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> ErrorResponse:
    """An ``ErrorResponse`` as PostgreSQL writes one (``S``, ``V``, ``C``, ``M``...)."""
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message)]
    if detail is not None:
        fields.append(("D", detail))
    if hint is not None:
        fields.append(("H", hint))
    return ErrorResponse(tuple(fields))


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return frame(b"p", cstr(mechanism) + int32(len(data)) + data)


def sasl_mechanisms(data: bytes) -> list[str]:
    r = reader(data)
    names: list[str] = []
    while True:
        name = r.cstring()
        if not name:
            break
        names.append(name)
    r.done()
    return names


BackendMessage = (
    Authentication | ParameterStatus | BackendKeyData | ReadyForQuery | ErrorResponse
    | CommandComplete | None
)  # fmt: skip


def decode_backend(kind: int, body: bytes) -> BackendMessage:
    """Validate one backend message; the read ones are returned decoded, others as None."""
    r = reader(body)
    result: BackendMessage = None
    if kind == T_AUTH:
        result = Authentication(r.int32(), r.rest())
    elif kind == T_PARAMETER_STATUS:
        result = ParameterStatus(r.cstring(), r.cstring())
    elif kind == T_KEY_DATA:
        result = BackendKeyData(r.int32(), r.raw(4))
    elif kind == T_READY:
        status = chr(r.byte())
        if status not in (IDLE, IN_TRANSACTION, FAILED_TRANSACTION):
            raise ProtocolViolation("unknown transaction status")
        result = ReadyForQuery(status)
    elif kind in (T_ERROR, T_NOTICE):
        result = _decode_fields(r, notice=kind == T_NOTICE)
    elif kind == T_COMMAND_COMPLETE:
        result = CommandComplete(r.cstring())
    elif kind in _EMPTY:
        pass
    elif kind in _OPAQUE:
        r.rest()
    elif kind == T_DATA_ROW:
        _skip_values(r, r.count())
    else:
        raise ProtocolViolation(f"unknown server message type {bytes([kind])!r}")
    r.done()
    return result


_EMPTY: Final = frozenset(
    {T_EMPTY_QUERY, T_PARSE_COMPLETE, T_BIND_COMPLETE, T_CLOSE_COMPLETE, T_NO_DATA,
     T_PORTAL_SUSPENDED, T_COPY_DONE}
)  # fmt: skip
_OPAQUE: Final = frozenset(
    {T_ROW_DESCRIPTION, T_PARAMETER_DESCRIPTION, T_COPY_IN, T_COPY_OUT, T_COPY_BOTH,
     T_COPY_DATA, T_NOTIFICATION, T_FUNCTION_RESULT, T_NEGOTIATE}
)  # fmt: skip


def _decode_fields(r: FieldReader, *, notice: bool) -> ErrorResponse:
    fields: list[tuple[str, str]] = []
    while True:
        code = r.byte()
        if code == 0:
            break
        fields.append((chr(code), r.cstring()))
    return ErrorResponse(tuple(fields), notice=notice)


def _skip_values(r: FieldReader, count: int) -> None:
    for _ in range(count):
        size = r.int32()
        if size < -1:
            raise ProtocolViolation("a column length below -1")
        if size > 0:
            r.raw(size)


def ready(status: str) -> bytes:
    return ReadyForQuery(status).encode()
