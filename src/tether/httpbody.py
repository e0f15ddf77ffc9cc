"""Bodies of answers Tether fetches for itself (an OAuth token, a JWKS, an OIDC discovery
document or token), read within a size limit *after* their content coding is undone.

httpx decodes every coding of a chain, each layer whole, before a caller reading
``aiter_bytes`` can count anything: a 590-byte ``Content-Encoding: gzip, gzip`` answer
became 256 MiB in memory. Here the body is read as sent (``aiter_raw``), capped, and only
``gzip`` or ``deflate`` alone is undone, to at most the same limit; any other coding, or a
chain, is refused. Callers ask for ``Accept-Encoding: identity`` (:data:`ACCEPT_IDENTITY`),
so a well-behaved server sends no coding at all.
"""

from __future__ import annotations

import zlib
from typing import Final

import httpx

__all__ = ["ACCEPT_IDENTITY", "BodyError", "decoded", "read_bounded"]

ACCEPT_IDENTITY: Final = {"accept-encoding": "identity"}
_WBITS: Final = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
                 "deflate": zlib.MAX_WBITS}  # fmt: skip


class BodyError(ValueError):
    """The body is over the limit, has a coding Tether does not undo, or does not decode;
    the message says which, never the body."""


async def read_bounded(response: httpx.Response, limit: int) -> bytes:
    """``response``'s body (a streamed response), decoded, at most ``limit`` bytes."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyError("too large")
    body = bytearray()
    async for chunk in response.aiter_raw():  # as sent: decoded below, bounded
        body += chunk
        if len(body) > limit:
            raise BodyError("too large")
    return decoded(bytes(body), response.headers.get_list("content-encoding"), limit)


def decoded(body: bytes, codings: list[str], limit: int) -> bytes:
    """``body`` without its content coding: none, or ``gzip`` or ``deflate`` alone, decoded
    to at most ``limit`` bytes; anything else is refused."""
    coded = [c for c in (c.strip().lower() for c in ",".join(codings).split(",")) if c]
    coded = [c for c in coded if c != "identity"]
    if not coded:
        return body
    if len(coded) > 1 or coded[0] not in _WBITS:
        raise BodyError("an unsupported Content-Encoding")
    stream = zlib.decompressobj(_WBITS[coded[0]])
    try:
        plain = stream.decompress(body, limit + 1)
    except zlib.error:
        raise BodyError("does not decode") from None
    if len(plain) > limit:
        raise BodyError("too large")
    if not stream.eof or stream.unused_data:
        raise BodyError("does not decode")
    return plain
