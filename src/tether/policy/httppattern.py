"""Path patterns of HTTP rules (spec 5.1), for :mod:`tether.policy.httpmatch`.

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
that fails the rules of :mod:`tether.policy.httppath`). A ``%`` is refused rather than
decoded, since patterns are written decoded and ``%20`` in a pattern is almost certainly a
mistake.

Performance (this runs on every request): patterns are compiled once. An all-literal pattern
is a tuple comparison; otherwise each run of segments between ``**`` compares all its literal
positions at once (``operator.itemgetter``), checks ``*``/``{name}`` positions for non-empty
values the same way and calls a test only for globs; without ``**`` the length is checked
first. Several ``**`` cost O(segments x runs), never exponential backtracking.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import call, itemgetter
from typing import Final

from tether.policy.errors import PatternError
from tether.policy.httppath import MAX_TARGET, HttpPath, literal_problem, show
from tether.policy.linearmatch import compile_star_glob

__all__ = ["PathPattern"]

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

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
        raise PatternError(f"path pattern {show(pattern)} does not start with '/'")
    if len(pattern) > MAX_TARGET:
        raise PatternError(f"path pattern longer than {MAX_TARGET} characters")
    for char, why in (("?", "a query"), ("#", "a fragment"), ("%", "percent-encoding")):
        if char in pattern:
            raise PatternError(
                f"path pattern {show(pattern)} holds {why} ({char!r}); "
                "patterns are written decoded and match the path only"
            )
    segments = pattern[1:].split("/")
    for index, segment in enumerate(segments[:-1]):
        if not segment:
            raise PatternError(f"path pattern {show(pattern)} holds an empty segment (#{index})")
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
        raise PatternError(f"path pattern {show(pattern)}: '**' must be a whole segment")
    pieces = segment.split("*")
    for piece in pieces:
        problem = literal_problem(piece)
        if problem is not None:
            raise PatternError(f"path pattern {show(pattern)}: {show(segment)} {problem}")
    if len(pieces) > 1:
        return _Segment(glob=_glob_test(pieces))
    if segment and not segment.strip("."):
        raise PatternError(f"path pattern {show(pattern)}: {segment!r} never matches")
    return _Segment(literal=segment)


def _capture_name(pattern: str, segment: str, seen: set[str]) -> str | None:
    """The name of a ``{name}`` segment (recorded in ``seen``), or None for other segments."""
    if "{" not in segment and "}" not in segment:
        return None
    name = segment[1:-1]
    if not (segment.startswith("{") and segment.endswith("}")) or not _NAME.fullmatch(name):
        raise PatternError(
            f"path pattern {show(pattern)}: {show(segment)} is not a whole '{{name}}' segment "
            "with a name of letters, digits and '_'"
        )
    if name in seen:
        raise PatternError(f"path pattern {show(pattern)} captures {name!r} twice")
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
    return compile_star_glob(pieces)
