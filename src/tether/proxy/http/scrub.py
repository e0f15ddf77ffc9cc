"""The injected credential hidden in response bodies: masked as it streams, in constant memory.

A target that echoes the request (an echo endpoint, an error page quoting the URL with a
``query`` credential, httpbin's ``/headers``) would show the agent the credential Tether
injected (DESIGN invariant 2). :func:`masker_for` turns an injection's secrets into the
byte strings such an echo would show (:func:`forms`), and a :class:`Scrubber` replaces
every occurrence of them in the body with as many mask bytes, chunk by chunk.

Security decisions:

* **Same length, so the body still streams**: each occurrence is replaced by as many mask
  bytes (``*``, or another byte when a secret holds ``*``), so ``Content-Length`` stays
  right and nothing is buffered beyond the bytes that may begin a secret.
* **Split secrets are caught**: between chunks the scrubber holds back only the longest
  end of the data that is the beginning of a secret (never more than the longest form less
  one byte), so an occurrence split across chunks is masked, while a body that does not
  end like a secret (JSON, lines, SSE events) is passed on at once. The output of any
  chunking is the output of masking the whole body at once (property-tested).
* **The mask byte is in no secret**, so masking cannot make a new occurrence; with the
  leftmost-longest scan, the output never contains any form.
* **Every length is masked**: a secret of a few bytes also masks innocent bytes that equal
  it, and lets an agent that can make the target echo chosen text test guesses; skipping it
  would hand it over outright. Such secrets are logged (once per value) as too short to be
  hidden well: use credentials of 8 bytes or more (``SHORT_SECRET``).
* **What cannot be scanned is refused** (:func:`unscannable`): the request asks for
  ``Accept-Encoding: identity`` and carries no ``Range``/``If-Range``
  (:func:`request_headers`). A body coded anyway with ``gzip`` or ``deflate`` alone is
  decoded before it is scanned (:mod:`tether.proxy.http.decode`); any other coding (br,
  zstd, stacked codings...: its bytes are not the secret's) or a partial ``206`` answer (a
  range can cut a secret at its edges, and two ranges give the two halves) is answered 502
  by the broker, never relayed.
* **Forms, not transformations**: the forms are the secret as sent and as an echo would
  write it (percent-encoded, form-encoded, JSON and HTML escaped; for basic auth the
  base64 pair and the password). A target that transforms the secret otherwise (reversed,
  hashed, split across responses the agent picks) is not covered: do not allow agents
  paths that compute on requests.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote_from_bytes, quote_plus

from tether.proxy.http.decode import DECODABLE, codings

Header = tuple[bytes, bytes]
SHORT_SECRET: Final = 8
_MASKS: Final = b"*#~X0"
_PERCENT: Final = re.compile(rb"%[0-9A-F]{2}")
_NOT_FORWARDED: Final = frozenset({b"accept-encoding", b"range", b"if-range"})
_NO_BODY: Final = frozenset({204, 304})
# Content codings named in a refusal (IANA's registry, and the x- aliases): any other text
# the target wrote there is not quoted, since it may be a reflected credential.
_NAMED_CODINGS: Final = frozenset(
    {b"aes128gcm", b"br", b"compress", b"dcb", b"dcz", b"deflate", b"exi", b"gzip",
     b"pack200-gzip", b"x-compress", b"x-gzip", b"zstd"}
)  # fmt: skip

log = logging.getLogger(__name__)


def forms(secret: bytes) -> set[bytes]:
    """The byte strings an echo of ``secret`` may show (empty strings left out)."""
    quoted = quote_from_bytes(secret, safe="").encode("ascii")
    found = {
        secret,
        quoted,
        _PERCENT.sub(lambda m: m.group().lower(), quoted),
        quote_plus(secret, safe="").encode("ascii"),
    }
    try:
        text = secret.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        for escaped in (json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]):
            found.add(escaped.encode("utf-8"))
            found.add(escaped.replace("/", "\\/").encode("utf-8"))  # PHP's json_encode
        found.add(html.escape(text).encode("utf-8"))
    found.discard(b"")
    return found


@dataclass(frozen=True, slots=True)
class Masker:
    """The forms of one injection's secrets, ready to scan for (shared by requests)."""

    needles: tuple[bytes, ...]  # longest first: at one position the longest form wins
    pattern: re.Pattern[bytes]
    by_first: tuple[tuple[int, tuple[bytes, ...]], ...]  # the forms by their first byte
    longest: int
    mask: bytes

    def scrubber(self) -> Scrubber:
        return Scrubber(self)

    def whole(self, body: bytes) -> bytes:
        """``body`` masked at once (what any chunking of it must give)."""
        return self.pattern.sub(lambda m: self.mask * len(m.group()), body)

    def held(self, data: bytes) -> int:
        """Where the longest end of ``data`` that begins a form (and is shorter) starts;
        ``len(data)`` when none does: the bytes from there are held for the next chunk."""
        size = len(data)
        start = max(0, size - self.longest + 1)
        held = size
        for first, group in self.by_first:
            at = data.find(first, start)
            while 0 <= at < held:
                if any(len(n) > size - at and data.startswith(n[: size - at], at) for n in group):
                    held = at
                    break
                at = data.find(first, at + 1)
        return held

    def masked(self, data: bytes, limit: int) -> tuple[bytes, int, int]:
        """``data`` with every form starting before ``limit`` masked: (the decided bytes,
        where they end, how many forms were masked)."""
        for needle in self.needles:
            if needle in data:
                break
        else:  # nothing to mask (most bodies): no copy when all of it is decided
            return (data if limit == len(data) else data[:limit]), limit, 0
        out = bytearray(data)
        end, count = limit, 0
        for found in self.pattern.finditer(data):
            start, stop = found.span()
            if start >= limit:
                break
            out[start:stop] = self.mask * (stop - start)
            end, count = max(end, stop), count + 1
        return bytes(out[:end]), end, count


class Scrubber:
    """One response body's masking, chunk by chunk (``count``: forms masked so far)."""

    __slots__ = ("_masker", "_pending", "count")

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        self._pending = b""
        self.count = 0

    def feed(self, chunk: bytes) -> bytes:
        """What may be sent of the body so far (maybe ``b""``: all of it held)."""
        data = self._pending + chunk if self._pending else chunk
        out, end, count = self._masker.masked(data, self._masker.held(data))
        self._pending = data[end:]
        self.count += count
        return out

    def flush(self) -> bytes:
        """The held bytes, at the end of the body."""
        data, self._pending = self._pending, b""
        if not data:
            return data
        out, _, count = self._masker.masked(data, len(data))
        self.count += count
        return out


def masker_for(secrets: Sequence[bytes]) -> Masker | None:
    """The masker for an injection's ``secrets``; None when nothing is injected."""
    if not secrets:
        return None
    return _masker(tuple(secrets))


@functools.lru_cache(maxsize=256)
def _masker(secrets: tuple[bytes, ...]) -> Masker | None:
    """Built once per set of secret values (a rotated secret is a new entry; old entries
    leave the cache as new ones come)."""
    needles = sorted(set().union(*(forms(s) for s in secrets if s)), key=lambda n: (-len(n), n))
    if not needles:
        return None
    if any(len(s) < SHORT_SECRET for s in secrets if s):
        log.warning("an injected credential is shorter than %d bytes: masking it in response "
                    "bodies also masks innocent bytes", SHORT_SECRET)  # fmt: skip
    used = set(b"".join(needles))
    mask = next((m for m in _MASKS if m not in used), None)
    if mask is None:
        mask = next(b for b in range(256) if b not in used) if len(used) < 256 else _MASKS[0]
    by_first: dict[int, list[bytes]] = {}
    for needle in needles:
        by_first.setdefault(needle[0], []).append(needle)
    return Masker(
        needles=tuple(needles),
        pattern=re.compile(b"|".join(re.escape(n) for n in needles)),
        by_first=tuple((b, tuple(ns)) for b, ns in by_first.items()),
        longest=len(needles[0]),
        mask=bytes([mask]),
    )


def request_headers(headers: Iterable[Header]) -> list[Header]:
    """The forwarded headers when the body will be scrubbed: no ``Range``/``If-Range``
    (a whole body is scanned), and ``Accept-Encoding: identity`` instead of the agent's
    (a compressed body cannot be); names as targets may fold them (``_`` or ``.`` for
    ``-``, as the broker's other header rules read them)."""
    kept = [(n, v) for n, v in headers if _folded(n) not in _NOT_FORWARDED]
    kept.append((b"accept-encoding", b"identity"))
    return kept


def _folded(name: bytes) -> bytes:
    return name.lower().replace(b"_", b"-").replace(b".", b"-")


def unscannable(method: bytes, status: int, headers: Iterable[Header]) -> str | None:
    """Why the body of this answer cannot be scrubbed (the broker answers 502), or None."""
    if method == b"HEAD" or status < 200 or status in _NO_BODY:
        return None
    if status == 206:
        return "the target answered a partial body (206), which cannot be scrubbed"
    coded = codings(headers)
    if len(coded) > 1 or (coded and coded[0] not in DECODABLE):
        coding = ", ".join(
            c.decode("ascii") if c in _NAMED_CODINGS else "(unregistered)" for c in coded
        )
        return (
            f"the target answered with Content-Encoding {coding!r}, asked for identity: "
            "only gzip or deflate alone is decoded, so this body cannot be scrubbed of the "
            "credential"
        )
    return None
