"""HTTP request paths, path patterns and methods (spec 5.1).

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

Patterns
========

A pattern is ``/``-separated segments, written **decoded** (``/files/a b`` matches
``/files/a%20b``); a literal segment matches the decoded path segment exactly, case-sensitively.
``*`` and ``{name}`` match one non-empty segment (``{name}`` captures its decoded value);
``*`` inside a segment (``inv-*``) matches any run of characters within that segment,
**including the empty run** (``inv-*`` matches ``inv-``), as globs usually do; there is no
escape for a literal ``*``. ``**`` as a whole segment matches zero or more segments, of any
content, including the empty segment of a trailing slash.

Trailing slash (spec: "part of the path"): ``/a/b/`` has the segments ``('a', 'b', '')`` and
the root ``/`` is ``('',)``; a pattern's trailing ``/`` is a literal empty last segment. So
``/a/b/`` matches the patterns ``/a/b/``, ``/a/*/``, ``/a/**`` and ``/**``, but not ``/a/b``
nor ``/a/*``. ``*`` and ``{name}`` never match the empty segment: ``/a/*`` does not match
``/a/``. ``**`` may match zero segments: ``/a/**`` matches ``/a``, and ``/**`` matches ``/``.

With several ``**``, segments between them are placed leftmost (deterministic captures).

Compilation errors raise :class:`~tether.policy.errors.PatternError`: a pattern not starting
with ``/``, an empty segment other than a trailing one, ``**`` or ``{`` / ``}`` that are not a
whole segment, a bad or duplicate ``{name}``, and any literal that could never match a
canonical path (``.``/``..``, ``;``, ``%``, ``?``, ``#``, ``\\``, control characters, Unicode
that fails the rules above). A ``%`` is refused rather than decoded, since patterns are written
decoded and ``%20`` in a pattern is almost certainly a mistake.

Methods
=======

Method names compare case-sensitively, ``"*"`` allows any method. ``method_ok`` checks the
RFC 9110 token syntax (and, spec silent, a length of at most 64). Override headers
(``X-HTTP-Method-Override``, ``X-HTTP-Method``, ``X-Method-Override``) are found in any case,
and (spec silent) also when spelled with ``_`` for ``-`` or surrounded by blanks, because CGI,
WSGI and some proxies fold those spellings together. Frameworks commonly upper-case the
override value, so an override ``delete`` yields both ``delete`` and ``DELETE``: each must be
allowed, and a deny rule on ``DELETE`` catches it. A value that is not a method token (empty,
a list) is an ``invalid-request``.

Performance (this runs on every request): ``canonicalize_path`` of a path without ``%`` is one
character-class regex and a split; percent-encoded paths take a slower per-segment route that
also produces the detail of a denial. Patterns are compiled once: an all-literal pattern is a
tuple comparison; otherwise each run of segments between ``**`` compares all its literal
positions at once (``operator.itemgetter``), checks ``*``/``{name}`` positions for non-empty
values the same way and calls a test only for globs; without ``**`` the length is checked
first. Several ``**`` cost O(segments x runs), never exponential backtracking.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import call, itemgetter
from typing import Final
from urllib.parse import unquote_to_bytes

from tether.policy.errors import AmbiguousPath, InvalidRequest, PatternError
from tether.policy.filepath import unicode_problem

__all__ = [
    "MAX_TARGET",
    "OVERRIDE_HEADERS",
    "HttpPath",
    "PathPattern",
    "canonicalize_path",
    "method_ok",
    "methods_match",
    "override_methods",
]

MAX_TARGET: Final = 8192
"""Longest accepted request target (path and query), in characters."""

OVERRIDE_HEADERS: Final = frozenset(
    {"x-http-method-override", "x-http-method", "x-method-override"}
)

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
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

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
        raise AmbiguousPath(f"path {_show(path)} does not start with '/'")
    bad = _RAW_BAD.search(path)
    if bad is not None:
        problem = _raw_char(bad.group())
        raise AmbiguousPath(f"path segment {_segment_at(path, bad.start())} holds {problem}")
    if "//" in path:
        raise AmbiguousPath(f"path {_show(path)} holds an empty segment ('//')")
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
        raise AmbiguousPath(f"path {_show(path)} decodes to a separator or control character")
    segments = tuple(decoded[1:].split("/"))
    if not decoded.isascii():
        _reject_unicode(segments)
    _reject_dot_segments(segments)
    return segments


def _decode_utf8(path: str) -> str:
    try:
        return unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise AmbiguousPath(f"path {_show(path)} does not decode to UTF-8") from None


def _reject_unicode(segments: tuple[str, ...]) -> None:
    for segment in segments:
        problem = unicode_problem(segment)
        if problem is not None:
            raise AmbiguousPath(f"path segment {_show(segment)} (decoded) holds {problem}")


def _segment_at(path: str, index: int) -> str:
    """The raw segment of ``path`` holding the character at ``index``, for error details."""
    start = path.rfind("/", 0, index) + 1
    end = path.find("/", index)
    return _show(path[start : end if end >= 0 else len(path)])


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


def _show(text: str, limit: int = 80) -> str:
    """A short, ASCII-only rendering of untrusted text for error details."""
    shown = ascii(text[:limit])
    if len(text) > limit or len(shown) > limit:
        return shown[:limit] + "..."
    return shown


# --- patterns -------------------------------------------------------------------------------

_SegmentTest = Callable[[str], object]
"""Tells whether one decoded path segment matches a glob segment (truthy if so)."""

_Picker = Callable[[tuple[str, ...]], tuple[str, ...]]
"""Picks the segments at fixed positions, always as a tuple."""


@dataclass(frozen=True, slots=True)
class _Segment:
    """One compiled pattern segment other than ``**``.

    A literal matches itself, a glob matches when its test is truthy, and with neither the
    segment is ``*`` or ``{name}``: any non-empty segment.
    """

    literal: str | None = None
    glob: _SegmentTest | None = None
    capture: str | None = None


def _picker(positions: list[int]) -> _Picker | None:
    if not positions:
        return None
    if len(positions) == 1:  # a slice, so that one position still gives a tuple
        return itemgetter(slice(positions[0], positions[0] + 1))
    return itemgetter(*positions)


@dataclass(frozen=True, slots=True)
class _Run:
    """Consecutive pattern segments without ``**``, compiled to C-level picks and compares.

    ``matches`` and ``capture`` take segments positioned at the start of the run and at least
    ``width`` long; the callers check lengths.
    """

    width: int
    literal_pick: _Picker | None
    literal_values: tuple[str, ...]
    nonempty_pick: _Picker | None
    glob_pick: _Picker | None
    glob_tests: tuple[_SegmentTest, ...]
    captures: tuple[tuple[int, str], ...]

    @classmethod
    def build(cls, segments: list[_Segment]) -> _Run:
        literal_at = [i for i, seg in enumerate(segments) if seg.literal is not None]
        any_at = [i for i, seg in enumerate(segments) if seg.literal is None and seg.glob is None]
        glob_at = [i for i, seg in enumerate(segments) if seg.glob is not None]
        return cls(
            width=len(segments),
            literal_pick=_picker(literal_at),
            literal_values=tuple(str(segments[i].literal) for i in literal_at),
            nonempty_pick=_picker(any_at),
            glob_pick=_picker(glob_at),
            glob_tests=tuple(seg.glob for seg in segments if seg.glob is not None),
            captures=tuple((i, seg.capture) for i, seg in enumerate(segments) if seg.capture),
        )

    def matches(self, segments: tuple[str, ...]) -> bool:
        if self.literal_pick is not None and self.literal_pick(segments) != self.literal_values:
            return False
        if self.nonempty_pick is not None and "" in self.nonempty_pick(segments):
            return False
        return self.glob_pick is None or all(map(call, self.glob_tests, self.glob_pick(segments)))

    def capture(self, segments: tuple[str, ...]) -> dict[str, str]:
        found: dict[str, str] = {}
        for position, name in self.captures:
            found[name] = segments[position]
        return found


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A compiled path pattern (spec 5.1); build it with :meth:`compile`."""

    source: str
    literal_prefix: tuple[str, ...]
    """The leading literal segments (decoded), for indexing patterns by path."""
    _literal: tuple[str, ...] | None = field(repr=False, compare=False)
    """All the segments when the pattern is literal only: matching is a tuple comparison."""
    _head: _Run = field(repr=False, compare=False)
    """The segments before the first ``**`` (all of them when there is no ``**``)."""
    _middle: tuple[_Run, ...] = field(repr=False, compare=False)
    """The runs between two ``**``."""
    _tail: _Run | None = field(repr=False, compare=False)
    """The segments after the last ``**``; None when there is no ``**``."""
    _min_segments: int = field(repr=False, compare=False)

    @classmethod
    def compile(cls, pattern: str) -> PathPattern:
        """Compile ``pattern``; raise ``PatternError`` if it is not a valid path pattern."""
        segments = _pattern_segments(pattern)
        runs = _compile_runs(pattern, segments)
        head, middle, tail = runs[0], runs[1:-1], (runs[-1] if len(runs) > 1 else None)
        prefix: list[str] = []
        for segment in segments:
            if segment == "**" or "*" in segment or segment.startswith("{"):
                break
            prefix.append(segment)
        literal = tuple(prefix) if len(prefix) == len(segments) else None
        minimum = sum(run.width for run in runs)
        return cls(pattern, tuple(prefix), literal, head, middle, tail, minimum)

    def match(self, path: HttpPath) -> dict[str, str] | None:
        """The ``{name}`` captures if ``path`` matches (``{}`` if none), else None."""
        segments = path.segments
        if self._literal is not None:
            return {} if segments == self._literal else None
        head = self._head
        if self._tail is None:
            if len(segments) != head.width or not head.matches(segments):
                return None
            return head.capture(segments)
        return self._match_spread(segments, head, self._tail)

    def _match_spread(
        self, segments: tuple[str, ...], head: _Run, tail: _Run
    ) -> dict[str, str] | None:
        """Match a pattern with ``**``: head and tail are anchored, middle runs go leftmost.

        Leftmost placement is complete here because every run has a fixed length: if any
        placement of the middle runs fits between head and tail, the leftmost one does.
        """
        count = len(segments)
        if count < self._min_segments or not head.matches(segments):
            return None
        captures = head.capture(segments)
        tail_start = count - tail.width
        if tail.width:
            tail_segments = segments[tail_start:]
            if not tail.matches(tail_segments):
                return None
            captures.update(tail.capture(tail_segments))
        position = head.width
        for run in self._middle:
            start = _leftmost(run, segments, position, tail_start)
            if start is None:
                return None
            position = start + run.width
            captures.update(run.capture(segments[start:position]))
        return captures


def _leftmost(run: _Run, segments: tuple[str, ...], start: int, end: int) -> int | None:
    """The first position in ``[start, end)`` where ``run`` fits and matches, or None."""
    for position in range(start, end - run.width + 1):
        if run.matches(segments[position : position + run.width]):
            return position
    return None


def _pattern_segments(pattern: str) -> list[str]:
    """Split a pattern into segments, checking its overall shape."""
    if not pattern.startswith("/"):
        raise PatternError(f"path pattern {_show(pattern)} does not start with '/'")
    if len(pattern) > MAX_TARGET:
        raise PatternError(f"path pattern longer than {MAX_TARGET} characters")
    for char, why in (("?", "a query"), ("#", "a fragment"), ("%", "percent-encoding")):
        if char in pattern:
            raise PatternError(
                f"path pattern {_show(pattern)} holds {why} ({char!r}); "
                "patterns are written decoded and match the path only"
            )
    segments = pattern[1:].split("/")
    for index, segment in enumerate(segments[:-1]):
        if not segment:
            raise PatternError(f"path pattern {_show(pattern)} holds an empty segment (#{index})")
    # '**/**' means the same as '**'.
    return [
        segment
        for index, segment in enumerate(segments)
        if not (segment == "**" and index > 0 and segments[index - 1] == "**")
    ]


def _compile_runs(pattern: str, segments: list[str]) -> tuple[_Run, ...]:
    """Compile the segments into the runs between ``**`` segments."""
    runs: list[_Run] = []
    current: list[_Segment] = []
    names: set[str] = set()
    for segment in segments:
        if segment == "**":
            runs.append(_Run.build(current))
            current = []
        else:
            current.append(_compile_segment(pattern, segment, names))
    runs.append(_Run.build(current))
    return tuple(runs)


def _compile_segment(pattern: str, segment: str, names: set[str]) -> _Segment:
    name = _capture_name(pattern, segment, names)
    if name is not None:
        return _Segment(capture=name)
    if segment == "*":
        return _Segment()
    if "**" in segment:
        raise PatternError(f"path pattern {_show(pattern)}: '**' must be a whole segment")
    pieces = segment.split("*")
    for piece in pieces:
        problem = _literal_problem(piece)
        if problem is not None:
            raise PatternError(f"path pattern {_show(pattern)}: {_show(segment)} {problem}")
    if len(pieces) > 1:
        return _Segment(glob=_glob_test(pieces))
    if segment and not segment.strip("."):
        raise PatternError(f"path pattern {_show(pattern)}: {segment!r} never matches")
    return _Segment(literal=segment)


def _capture_name(pattern: str, segment: str, seen: set[str]) -> str | None:
    """The name of a ``{name}`` segment (recorded in ``seen``), or None for other segments."""
    if "{" not in segment and "}" not in segment:
        return None
    name = segment[1:-1]
    if not (segment.startswith("{") and segment.endswith("}")) or not _NAME.fullmatch(name):
        raise PatternError(
            f"path pattern {_show(pattern)}: {_show(segment)} is not a whole '{{name}}' segment "
            "with a name of letters, digits and '_'"
        )
    if name in seen:
        raise PatternError(f"path pattern {_show(pattern)} captures {name!r} twice")
    seen.add(name)
    return name


def _glob_test(pieces: list[str]) -> _SegmentTest:
    """A test for a segment with ``*`` inside (each ``*`` any run, possibly empty)."""
    if len(pieces) == 2 and not pieces[1]:
        prefix = pieces[0]
        return lambda segment: segment.startswith(prefix)
    if len(pieces) == 2 and not pieces[0]:
        suffix = pieces[1]
        return lambda segment: segment.endswith(suffix)
    return re.compile("(?s)" + ".*".join(re.escape(piece) for piece in pieces)).fullmatch


def _literal_problem(literal: str) -> str | None:
    """Why a decoded literal can never be part of a canonical path segment, or None."""
    bad = _DECODED_BAD.search(literal)
    if bad is not None:
        return f"holds {bad.group()!r}, which a canonical path segment never holds"
    return unicode_problem(literal)


# --- methods --------------------------------------------------------------------------------


def method_ok(method: str) -> bool:
    """True if ``method`` is an RFC 9110 token of at most 64 characters."""
    return _TOKEN.fullmatch(method) is not None


def methods_match(allowed: frozenset[str], method: str) -> bool:
    """True if ``method`` is listed in ``allowed`` (case-sensitive) or ``allowed`` has ``*``."""
    return method in allowed or "*" in allowed


def override_methods(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The methods named by method-override headers, each also upper-cased, without repeats.

    Raises ``InvalidRequest`` if an override value is not a method token.
    """
    found: dict[str, None] = {}
    for name, value in headers.items():
        if name.strip(" \t").replace("_", "-").lower() not in OVERRIDE_HEADERS:
            continue
        method = value.strip(" \t")
        if not method_ok(method):
            raise InvalidRequest(f"header {_show(name)} names no valid method: {_show(value)}")
        found[method] = None
        found[method.upper()] = None
    return tuple(found)
