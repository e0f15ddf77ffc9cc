"""Argument and path globs (spec 5.2 ``ssh.commands``, spec 5.5 ``files``).

Token globs
===========

A token glob matches one argument (or one file path). ``*`` matches any run of characters
except ``/`` (including the empty run), ``?`` exactly one character except ``/``, and ``**``
(any run of two or more stars) any run of characters including ``/``. Every other character is
literal: there are no character classes (``[`` is literal) and no escape for a literal ``*``.

Dot segments
------------

The spec says a wildcard "never matches a path segment that is ``.`` or ``..``". This is what
stops ``/srv/*/x`` from matching ``/srv/../x`` and ``/data/**`` from matching
``/data/../etc/passwd``. It is enforced by the candidate's *segments* (split on ``/``), not by
the characters a wildcard happened to consume, so ``.*`` does not match ``..`` and ``*.`` does
not match ``.`` either: a ``.`` or ``..`` segment of the candidate matches only the very same
literal segment written in the pattern (``/srv/../x`` matches the literal pattern
``/srv/../x``, and nothing with a wildcard touching that segment).

Implementation: before matching, each ``.`` / ``..`` segment of the candidate is replaced by a
sentinel code point (``\\x01`` / ``\\x02``), and the same is done to whole literal ``.`` /
``..`` segments of the pattern. Wildcards are compiled to character classes that exclude the
sentinels, so no wildcard can consume them. A real ``\\x01``/``\\x02`` in a candidate is
turned into ``\\x00`` first (patterns never hold control characters, so only wildcards can
match it, and they do not tell control characters apart).
Only ``/`` delimits segments (spec: "path segment"): ``--dir=..`` is one segment, which
``--dir=*`` matches.

Whole-segment ``**``
--------------------

A ``**`` that forms a whole ``/``-separated segment matches zero or more whole segments, as in
HTTP patterns (5.1): ``/data/**`` matches ``/data`` itself as well as everything below it, and
``/a/**/b`` matches ``/a/b``. Spec silent; chosen because a deny rule on ``/secrets/**`` must
also cover the directory ``/secrets`` itself (otherwise an SFTP ``rename /secrets /tmp/x``
would escape it), and the character-level reading already lets ``/data/**`` match ``/data/``,
which names the same directory.

Consequences worth knowing (follow the spec literally): ``*`` may match the empty run, so
``rm -f /tmp/*`` matches the argument ``/tmp/`` (the directory), and a *deny* rule's wildcard
does not match an argument with a ``..`` segment either (``cat /etc/*`` does not match
``cat /etc/../etc/shadow``); allow rules are therefore the place to constrain paths.

Argv patterns
=============

``ArgvPattern.compile`` splits a pattern like ``shlex.split``. The first token is the command
name and matches ``argv[0]`` exactly (``/bin/rm`` and ``rm`` differ). A token that is exactly
``**`` matches zero or more whole arguments of any content (dot segments included: that is
what "any content" says). Every other token is a token glob matching exactly one argument.
Spec silent, decided: a command name holding ``*`` or ``?`` is a :class:`PatternError`
(a glob there is certainly a mistake, as the name is never globbed), as are an empty pattern,
an empty command name, a pattern ``shlex`` cannot split, and control characters other than tab
and newline in any token (the shell parser never yields them, so the rule could never match).

Path globs
==========

``compile_path_glob`` is a token glob over canonical absolute paths (5.5). Because the file
path is canonical before it is matched (see :mod:`tether.policy.filepath`), a pattern that
could never match a canonical path is a :class:`PatternError`: not absolute, an empty segment
(``//`` or a trailing ``/`` other than the root ``/``), a ``.``/``..``/dot-only segment, a
backslash or a control character.

Pure: no I/O. Literal patterns compare with ``==``; others compile once to one regular
expression matched whole in time linear in the argument (:mod:`tether.policy.linearmatch`:
an agent's argument must not make a pattern with several wildcards backtrack).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from tether.policy.errors import PatternError
from tether.policy.linearmatch import compile_fullmatch

__all__ = ["ArgvPattern", "TokenMatcher", "compile_path_glob", "compile_token_glob"]

TokenMatcher = Callable[[str], bool]

_DOT: Final = "\x01"
_DOTDOT: Final = "\x02"
# One candidate character inside a segment / anywhere; never a sentinel.
_ONE: Final = r"[^/\x01\x02]"
_ANY: Final = r"[^\x01\x02]"
_WILDCARD: Final = re.compile(r"\*\*+|\*|\?")
# A dot segment, or a character that must not be mistaken for a sentinel.
_NEEDS_ENCODING: Final = re.compile(r"(?:^|/)\.\.?(?=/|\Z)|[\x01\x02]")
_SENTINELS_TO_NUL: Final = str.maketrans({_DOT: "\x00", _DOTDOT: "\x00"})
_BAD_TOKEN_CHAR: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_BAD_PATH_CHAR: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


# --- candidates -----------------------------------------------------------------------------


def _encode(candidate: str) -> str:
    """The candidate with its ``.``/``..`` segments replaced by sentinels.

    Real ``\\x01``/``\\x02`` characters become ``\\x00`` first: a pattern never holds a
    control character (compilation refuses them), so only wildcards can match these, and
    wildcards treat every non-sentinel character alike; the swap cannot change a result.
    """
    if _NEEDS_ENCODING.search(candidate) is None:
        return candidate
    candidate = candidate.translate(_SENTINELS_TO_NUL)
    return "/".join(_dot_sentinel(part) for part in candidate.split("/"))


def _dot_sentinel(segment: str) -> str:
    if segment == ".":
        return _DOT
    if segment == "..":
        return _DOTDOT
    return segment


# --- compilation ----------------------------------------------------------------------------


def _segment_regex(segment: str) -> str:
    """Regex for one ``/``-free piece of a pattern (wildcards inside, literal elsewhere)."""
    if segment in (".", ".."):
        return _dot_sentinel(segment)
    out: list[str] = []
    pos = 0
    for wild in _WILDCARD.finditer(segment):
        out.append(re.escape(segment[pos : wild.start()]))
        text = wild.group()
        out.append(_ONE if text == "?" else _ONE + "*" if text == "*" else _ANY + "*")
        pos = wild.end()
    out.append(re.escape(segment[pos:]))
    return "".join(out)


def _is_double_star(segment: str) -> bool:
    return len(segment) >= 2 and segment.strip("*") == ""


def _pattern_regex(pattern: str) -> str:
    """Regex for a whole token pattern, with whole-segment ``**`` matching 0+ segments."""
    segments = _merge_double_stars(pattern.split("/"))
    if len(segments) == 1:
        return _segment_regex(segments[0])
    out: list[str] = []
    for index, segment in enumerate(segments):
        if not _is_double_star(segment):
            after_leading_stars = index == 1 and _is_double_star(segments[0])
            separator = "/" if index > 0 and not after_leading_stars else ""
            out.append(separator + _segment_regex(segment))
        elif index == 0:
            out.append(f"(?:{_ANY}*/)?")  # leading '**/': nothing, or anything then '/'
        else:
            out.append(f"(?:/{_ANY}*)?")  # '/**': nothing, or '/' then anything
    return "".join(out)


def _merge_double_stars(segments: list[str]) -> list[str]:
    """Collapse ``**/**`` into ``**``: both mean any number of segments."""
    merged: list[str] = []
    for segment in segments:
        if merged and _is_double_star(segment) and _is_double_star(merged[-1]):
            continue
        merged.append(segment)
    return merged


def _compile(pattern: str) -> TokenMatcher:
    if _WILDCARD.search(pattern) is None:
        literal = pattern
        return lambda candidate: candidate == literal
    matches = compile_fullmatch(_pattern_regex(pattern))
    return lambda candidate: matches(_encode(candidate))


def compile_token_glob(pattern: str) -> TokenMatcher:
    """Compile a spec 5.2 token glob into a test on one argument.

    The empty pattern matches only the empty argument (``grep ''`` is a real command).
    Raises :class:`PatternError` for a non-string or a control character other than tab
    and newline.
    """
    if not isinstance(pattern, str):
        raise PatternError(f"a glob must be a string, not {type(pattern).__name__}")
    bad = _BAD_TOKEN_CHAR.search(pattern)
    if bad is not None:
        raise PatternError(f"glob {pattern!r} holds the control character {bad.group()!r}")
    return _compile(pattern)


def compile_path_glob(pattern: str) -> TokenMatcher:
    """Compile a spec 5.5 file path glob into a test on a canonical absolute path."""
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise PatternError(f"path glob {pattern!r} must be an absolute path (start with '/')")
    problem = _path_pattern_problem(pattern)
    if problem is not None:
        raise PatternError(f"path glob {pattern!r} {problem}")
    return _compile(pattern)


def _path_pattern_problem(pattern: str) -> str | None:
    """Why a path glob can never match a canonical path, or None."""
    bad = _BAD_PATH_CHAR.search(pattern)
    if bad is not None:
        return f"holds {bad.group()!r}, which a canonical path never holds"
    if pattern == "/":
        return None
    for segment in pattern.split("/")[1:]:
        if segment == "":
            return "has an empty segment ('//' or a trailing '/')"
        if segment.strip(".") == "":
            return f"has the segment {segment!r}, which a canonical path never holds"
    return None


# --- argv patterns --------------------------------------------------------------------------


_ANY_ARGS: Final = "**"


@dataclass(frozen=True, slots=True)
class ArgvPattern:
    """A compiled ``ssh.commands`` entry: command name plus argument globs (spec 5.2)."""

    source: str
    command_name: str
    tokens: tuple[str, ...]
    """The pattern's words after ``shlex.split``, command name first."""
    _matchers: tuple[TokenMatcher | None, ...] = field(repr=False, compare=False)
    """One per argument token; None for a whole-argument ``**``."""

    @classmethod
    def compile(cls, pattern: str) -> ArgvPattern:
        """Split ``pattern`` like ``shlex.split`` and compile its argument globs."""
        if not isinstance(pattern, str):
            raise PatternError(f"a command pattern must be a string, not {type(pattern).__name__}")
        try:
            tokens = tuple(shlex.split(pattern))
        except ValueError as exc:
            raise PatternError(f"command pattern {pattern!r} does not split: {exc}") from None
        _check_command_name(pattern, tokens)
        matchers = tuple(
            None if token == _ANY_ARGS else compile_token_glob(token) for token in tokens[1:]
        )
        return cls(pattern, tokens[0], tokens, matchers)

    def matches(self, argv: Sequence[str]) -> bool:
        """True if ``argv`` (command name first) matches this pattern."""
        if not argv or argv[0] != self.command_name:
            return False
        return _match_arguments(self._matchers, argv, 1)


def _check_command_name(pattern: str, tokens: tuple[str, ...]) -> None:
    if not tokens:
        raise PatternError(f"command pattern {pattern!r} is empty")
    name = tokens[0]
    if name == "" or "*" in name or "?" in name:
        raise PatternError(
            f"command pattern {pattern!r}: the command name {name!r} must be a literal name "
            "(it is compared exactly, never globbed)"
        )
    bad = _BAD_TOKEN_CHAR.search(name)
    if bad is not None:
        raise PatternError(
            f"command pattern {pattern!r} holds the control character {bad.group()!r}"
        )


def _match_arguments(
    matchers: tuple[TokenMatcher | None, ...], argv: Sequence[str], start: int
) -> bool:
    """Match ``argv[start:]`` against ``matchers``; None matches any run of whole arguments.

    Classic wildcard matching with one backtrack point: every other matcher consumes exactly
    one argument, so retrying from the last ``**`` with one more argument swallowed is complete.
    Worst case O(len(matchers) * len(argv)) matcher calls.
    """
    m, a = 0, start
    star_m, star_a = -1, start
    while a < len(argv):
        if m < len(matchers) and matchers[m] is None:
            star_m, star_a = m, a
            m += 1
            continue
        test = matchers[m] if m < len(matchers) else None
        if test is not None and test(argv[a]):
            m, a = m + 1, a + 1
        elif star_m >= 0:
            star_a += 1
            m, a = star_m + 1, star_a
        else:
            return False
    return all(matcher is None for matcher in matchers[m:])
