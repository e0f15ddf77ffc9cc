"""Canonical form of HTTP request targets (spec 5.1), for :mod:`tether.policy.httpmatch`.

Canonical form
==============

The broker forwards the path exactly as the policy matched it, so the policy must read the path
the way every server behind it could read it. Anything two servers might read differently is
denied as ``ambiguous-path`` (:class:`~tether.policy.errors.AmbiguousPath`) rather than
normalised: a normalised path is not the path that gets forwarded. ``canonicalize_path`` takes
the request target (path and optional query) and denies:

* a path that does not start with ``/`` (so also the absolute form ``http://h/p`` and ``*``);
* an empty segment (``//``); exactly one trailing ``/`` is allowed and is part of the path;
* a segment that after percent-decoding is ``.`` or ``..`` (``%2e``, ``.%2E`` ...), and
  (spec silent) any segment made only of dots (``...``), a traversal on some platforms;
* an encoded ``/`` or ``\\`` (``%2F``, ``%5C``, any case) and a raw ``\\``;
* a ``;`` in a segment, raw **or encoded** (``%3B``): ``..;/`` and ``;jsessionid=`` are read
  as path parameters by some servers (Tomcat) and as data by others; a server that decodes
  before splitting parameters makes the encoded form just as dangerous;
* NUL and every other control character, raw or encoded: C0, DEL and (decoded) C1;
* invalid percent-encoding (``%G1``, ``%4``, a trailing ``%``), and decoded bytes that are not
  strict UTF-8 (so overlong forms such as ``%C0%AE`` and encoded surrogates are refused);
* a fragment (``#``), which a client never sends: its presence means the target was built by
  something that did not parse it as a URL.

Where the spec is silent the safe choice is made (deny), each for a concrete confusion:

* raw characters RFC 3986 does not allow in a path: space, ``"``, ``<``, ``>``, ``^``, the
  backtick, ``{``, ``|``, ``}``, ``[``, ``]`` and any raw non-ASCII character (they must arrive
  percent-encoded; servers disagree on how to read them raw);
* an encoded ``%`` (``%25``): double encoding; a server or middleware that decodes twice would
  see ``%2e%2e`` as ``..`` after the policy saw a harmless name;
* an encoded ``?`` or ``#`` (``%3F``, ``%23``): servers that decode before re-parsing (the
  Apache ``mod_rewrite`` ``%3F`` confusion) would cut the path short there;
* decoded non-ASCII text that fails :func:`tether.policy.filepath.unicode_problem`
  (not NFKC-normalised, Unicode control/format/unassigned characters, slash and dot
  look-alikes) -- see that module for why;
* a target longer than :data:`MAX_TARGET` (8 KiB, the request-line limit of common servers).

The query string is not part of path matching and is kept raw for CEL. It must be printable
ASCII without ``#`` and with valid percent-encoding (deny: a raw space or control character
could split the request line, an invalid escape is read differently by different parsers).
Encoded characters in the query (``%00``, ``%0A`` ...) are application data and are allowed.

Performance (this runs on every request): ``canonicalize_path`` of a path without ``%`` is one
character-class regex and a split; percent-encoded paths take a slower per-segment route that
also produces the detail of a denial.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

from tether.policy.errors import AmbiguousPath
from tether.policy.filepath import unicode_problem

__all__ = ["MAX_TARGET", "HttpPath", "canonicalize_path", "literal_problem", "show"]

MAX_TARGET: Final = 8192
"""Longest accepted request target (path and query), in characters."""

_PCHAR: Final = r"A-Za-z0-9\-._~!$&'()*+,=:@"
# A '/' then plain RFC 3986 path characters: no '%', no ';'. Without '//' such a path has no
# empty segment but a trailing one, and needs no decoding.
_PLAIN_PATH: Final = re.compile(rf"/[{_PCHAR}/]*")
_RAW_BAD: Final = re.compile(rf"[^{_PCHAR}%/]")
_BAD_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DECODED_BAD: Final = re.compile(r"[\x00-\x1f\x7f/\\;%?#]")
_DECODED_BAD_INSIDE: Final = re.compile(r"[\x00-\x1f\x7f\\;%?#]")  # the same without '/'
# The escapes of the characters above: C0 controls, '#', '%', '/', ';', '?', '\', DEL.
_ENCODED_DANGER: Final = re.compile(r"%(?:[01][0-9A-Fa-f]|2[35Ff]|3[BbFf]|5[Cc]|7[Ff])")
_QUERY_CHARS: Final = re.compile(r"[!\"$-~]*")  # printable ASCII but space and '#'

_DECODED_MESSAGES: Final = {
    "/": "an encoded '/' (%2F)",
    "\\": "an encoded '\\' (%5C)",
    ";": "an encoded ';' (%3B)",
    "%": "an encoded '%' (%25, double encoding)",
    "?": "an encoded '?' (%3F)",
    "#": "an encoded '#' (%23)",
}


@dataclass(frozen=True, slots=True)
class HttpPath:
    """A request path in canonical form; build it with :func:`canonicalize_path` only."""

    path: str
    """The path exactly as received, without the query: what the broker forwards."""
    segments: tuple[str, ...]
    """Percent-decoded segments; a trailing ``/`` gives a final ``''``, the root is ``('',)``."""
    query: str
    """The raw query string without ``?``; ``''`` when absent."""


def canonicalize_path(target: str) -> HttpPath:
    """Split ``target`` (path with optional query) into an :class:`HttpPath`, or deny it.

    Raises ``AmbiguousPath`` for every form listed in the module docstring.
    """
    if len(target) > MAX_TARGET:
        raise AmbiguousPath(f"request target longer than {MAX_TARGET} characters")
    path, _, query = target.partition("?")
    if "//" not in path and _PLAIN_PATH.fullmatch(path) is not None:
        segments = tuple(path[1:].split("/"))
        if "/." in path:
            _reject_dot_segments(segments)
    else:
        segments = _decode_path(path)
    if query and (
        _QUERY_CHARS.fullmatch(query) is None
        or ("%" in query and _BAD_PERCENT.search(query) is not None)
    ):
        raise AmbiguousPath(_query_problem(query))
    return HttpPath(path, segments, query)


def _decode_path(path: str) -> tuple[str, ...]:
    """Check a path that is not plain (percent-encoded, or not canonical) and decode it.

    Every check scans the whole path once, so a long hostile path costs a few linear scans,
    not work per segment. Encoded '/' is refused before decoding, so splitting the decoded
    path gives exactly the decoded segments.
    """
    if not path.startswith("/"):
        raise AmbiguousPath(f"path {show(path)} does not start with '/'")
    bad = _RAW_BAD.search(path)
    if bad is not None:
        problem = _raw_char(bad.group())
        raise AmbiguousPath(f"path segment {_segment_at(path, bad.start())} holds {problem}")
    if "//" in path:
        raise AmbiguousPath(f"path {show(path)} holds an empty segment ('//')")
    bad = _BAD_PERCENT.search(path)
    if bad is not None:
        where = _segment_at(path, bad.start())
        raise AmbiguousPath(f"path segment {where} holds an invalid percent-encoding")
    bad = _ENCODED_DANGER.search(path)
    if bad is not None:
        problem = _DECODED_MESSAGES.get(
            chr(int(bad.group()[1:], 16)), "an encoded control character"
        )
        raise AmbiguousPath(f"path segment {_segment_at(path, bad.start())} holds {problem}")
    decoded = _decode_utf8(path)
    # Defence in depth: the checks above must have left nothing for this one to find.
    if decoded.count("/") != path.count("/") or _DECODED_BAD_INSIDE.search(decoded):
        raise AmbiguousPath(f"path {show(path)} decodes to a separator or control character")
    segments = tuple(decoded[1:].split("/"))
    if not decoded.isascii():
        _reject_unicode(segments)
    _reject_dot_segments(segments)
    return segments


def _decode_utf8(path: str) -> str:
    try:
        return unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise AmbiguousPath(f"path {show(path)} does not decode to UTF-8") from None


def _reject_unicode(segments: tuple[str, ...]) -> None:
    for segment in segments:
        problem = unicode_problem(segment)
        if problem is not None:
            raise AmbiguousPath(f"path segment {show(segment)} (decoded) holds {problem}")


def _segment_at(path: str, index: int) -> str:
    """The raw segment of ``path`` holding the character at ``index``, for error details."""
    start = path.rfind("/", 0, index) + 1
    end = path.find("/", index)
    return show(path[start : end if end >= 0 else len(path)])


def _raw_char(char: str) -> str:
    """Name a raw character that may not appear in a path segment."""
    if char == "\\":
        return "a raw '\\'"
    if char == ";":
        return "a ';' (path parameters)"
    if char == "#":
        return "a fragment ('#')"
    if char < " " or char == "\x7f":
        return "a control character"
    if not char.isascii():
        return "a raw non-ASCII character (it must be percent-encoded)"
    return f"the character {char!r}, which RFC 3986 does not allow in a path"


def _reject_dot_segments(segments: tuple[str, ...]) -> None:
    for segment in segments:
        if segment and not segment.strip("."):
            raise AmbiguousPath(f"path holds the segment {segment!r} (after decoding)")


def _query_problem(query: str) -> str:
    if "#" in query:
        return "request target holds a fragment ('#')"
    if _BAD_PERCENT.search(query) is not None:
        return "query holds an invalid percent-encoding"
    return "query holds a space, a control or a non-ASCII character"


def show(text: str, limit: int = 80) -> str:
    """A short, ASCII-only rendering of untrusted text for error details."""
    shown = ascii(text[:limit])
    if len(text) > limit or len(shown) > limit:
        return shown[:limit] + "..."
    return shown


def literal_problem(literal: str) -> str | None:
    """Why a decoded literal can never be part of a canonical path segment, or None."""
    bad = _DECODED_BAD.search(literal)
    if bad is not None:
        return f"holds {bad.group()!r}, which a canonical path segment never holds"
    return unicode_problem(literal)
