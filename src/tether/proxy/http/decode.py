"""A gzip- or deflate-coded answer decoded, so the injected credential can be masked in it.

When a credential is injected, the broker asks the target for ``Accept-Encoding: identity``
(:func:`tether.proxy.http.scrub.request_headers`): the scrubber needs the body's own bytes.
Some targets answer coded anyway: S3 serves an object stored gzip-coded with its stored
``Content-Encoding: gzip`` whatever the request asked. Such an answer is decoded here, on its
way to the scrubber, and reaches the agent uncoded.

Security decisions:

* **Only what the standard library decodes exactly**: ``gzip`` (and its alias ``x-gzip``)
  and ``deflate`` (RFC 9110 section 8.4.1: the zlib format), each alone. Other codings
  (``br``, ``zstd``, ``compress``) and stacked ones (``gzip, gzip``) stay refused (502):
  :func:`tether.proxy.http.scrub.unscannable`.
* **Constant memory whatever the ratio**: each call of ``zlib`` gives at most
  :data:`PIECE` bytes, and the broker sends each piece to the agent (with its flow control)
  before it asks for the next, so a small body that decodes to gigabytes ("a zip bomb")
  streams at the agent's pace and never sits in memory.
* **A body that does not decode ends the answer as a failure**: a corrupt stream, bytes
  after a deflate stream's end or after a gzip member that are not another member, or a
  body that ends inside its stream raise :class:`DecodeError`; the broker then cuts the
  agent's connection (a truncated answer, never one that looks complete) and audits why.
  A gzip body may hold several members (RFC 1952 section 2.2), decoded one after another.
* **The headers follow the body** (:func:`decoded_headers`): ``Content-Encoding`` and
  ``Content-Length`` go (the agent's side is chunked), the digests of the coded bytes
  (``Content-MD5``, ``Digest``, ``Content-Digest``, ``Repr-Digest``) go, and a strong
  ``ETag`` becomes weak: the bytes sent are not the ones it named.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Any, Final

from tether.proxy.http.upstream import UpstreamError

Header = tuple[bytes, bytes]

PIECE: Final = 64 * 1024
DECODABLE: Final = {b"gzip": "gzip", b"x-gzip": "gzip", b"deflate": "deflate"}
_CODED_ONLY: Final = frozenset(
    {b"content-encoding", b"content-length", b"content-md5", b"digest", b"content-digest",
     b"repr-digest"}
)  # fmt: skip


class DecodeError(UpstreamError):
    """The answer's body does not decode as its ``Content-Encoding`` says: the target broke
    its answer, handled as any other upstream failure (the agent's connection cut)."""


def codings(headers: Iterable[Header]) -> list[bytes]:
    """The answer's content codings, lower-cased, in the order applied (``identity`` left
    out: it is no coding)."""
    found: list[bytes] = []
    for name, value in headers:
        if name.lower() == b"content-encoding":
            found += [c.strip().lower() for c in value.split(b",") if c.strip()]
    return [c for c in found if c != b"identity"]


def decodable(headers: Iterable[Header]) -> str | None:
    """``"gzip"`` or ``"deflate"`` when the answer carries that coding alone, else None
    (none, or one this module does not decode)."""
    found = codings(headers)
    return DECODABLE.get(found[0]) if len(found) == 1 else None


def decoding(
    answer: Iterable[Header], shown: list[Header], extra: dict[str, Any]
) -> tuple[BodyDecoder | None, list[Header]]:
    """For an answer whose body is scrubbed: its decoder when it is coded (None when not),
    and the headers the agent gets for the uncoded body; ``extra`` (the audit event's
    detail) names the coding."""
    coding = decodable(answer)
    if coding is None:
        return None, shown
    extra["decoded"] = coding
    return BodyDecoder(coding), decoded_headers(shown)


def decoded_headers(headers: Iterable[Header]) -> list[Header]:
    """The headers of an answer whose body the agent receives decoded."""
    kept: list[Header] = []
    for name, value in headers:
        lower = name.lower()
        if lower in _CODED_ONLY:
            continue
        if lower == b"etag" and not value.lstrip().startswith(b"W/"):
            value = b"W/" + value.lstrip()
        kept.append((name, value))
    return kept


class BodyDecoder:
    """One answer's body decoded as it streams: :meth:`feed` each chunk from the target,
    then :meth:`finish` at its end."""

    __slots__ = ("_fed", "_stream", "coding")

    def __init__(self, coding: str) -> None:
        if coding not in ("gzip", "deflate"):
            raise ValueError(f"cannot decode {coding!r}")
        self.coding = coding
        self._stream = self._new()
        self._fed = False

    def _new(self) -> zlib._Decompress:
        return zlib.decompressobj(16 + zlib.MAX_WBITS if self.coding == "gzip" else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of ``data``, in pieces of at most :data:`PIECE` bytes; raises
        :class:`DecodeError` (possibly after some pieces) when it does not decode."""
        self._fed = self._fed or bool(data)
        pending = True  # zlib may hold output for which no more input is needed
        while data or pending:
            if self._stream.eof:
                if not data:
                    return
                if self.coding != "gzip":
                    raise DecodeError("the deflate body has bytes after its end")
                self._stream = self._new()  # the next gzip member
            try:
                piece = self._stream.decompress(data, PIECE)
            except zlib.error as error:
                raise DecodeError(f"the {self.coding} body does not decode: {error}") from None
            if piece:
                yield piece
            pending = len(piece) == PIECE
            data = self._stream.unused_data if self._stream.eof else self._stream.unconsumed_tail

    def finish(self) -> None:
        """At the end of the body: raises :class:`DecodeError` when it ended inside its
        stream (an empty body is accepted: some targets code a body of nothing so)."""
        if self._fed and not self._stream.eof:
            raise DecodeError(f"the {self.coding} body ends before its stream does (truncated)")
