"""Whole-string matching of the globs' regular expressions in time linear in the subject.

Every glob of the policy language (names, HTTP segment globs, table globs, forward
destinations, argument and file path globs) compiles to a small regular expression matched
with ``fullmatch``. Python's :mod:`re` backtracks: a pattern with *k* unbounded wildcards
(``a*b*c*d``) takes O(n^k) steps on a subject of length *n* that almost matches, and the
subject is the agent's (an argument, a path segment, a tool name): four stars in a rule and
a few kilobytes of ``aaaa`` would hold the node's event loop for minutes.

:func:`compile_fullmatch` keeps :mod:`re` for an expression with at most one unbounded
repetition (its worst case is O(n * m), no worse than reading the subject), and runs any
other as a Thompson NFA: every state is advanced at once, one subject character at a time,
so a match costs O(n * m) whatever the pattern (m: the expression's size). Both give the
same answers (property-tested against :mod:`re` on subjects short enough for it). Globs
whose wildcards all match the same characters (names, HTTP segments, tables, forward
destinations) use :func:`compile_star_glob` instead, which stays in :mod:`re` (no Python
loop per character) with atomic groups; the automaton serves the argument and path globs,
whose ``*``, ``**`` and ``?`` differ.

Only the constructs the glob compilers emit are accepted (anything else is a bug, a
``ValueError`` at compile time): literal characters and :func:`re.escape` escapes
(``\\x`` for a punctuation character, ``\\xHH``), ``.`` (with ``DOTALL``: any character),
negated classes of literal characters (``[^/\\x01\\x02]``), the quantifiers ``*`` and ``?`` on
one of those or on a non-capturing group ``(?:...)``, and a leading ``(?s)``.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["compile_fullmatch", "compile_nfa", "compile_star_glob"]

Matcher = Callable[[str], bool]

_CHAR: Final = 0  # payload: the character
_NOT_IN: Final = 1  # payload: the excluded characters (empty: any character)
_SPLIT: Final = 2  # payload: (first, second) targets
_JUMP: Final = 3  # payload: the target
_MATCH: Final = 4


@dataclass(frozen=True, slots=True)
class _Atom:
    kind: int  # _CHAR or _NOT_IN
    value: str | frozenset[str]


@dataclass(frozen=True, slots=True)
class _Repeat:
    node: _Node
    optional_only: bool  # ``?`` rather than ``*``


@dataclass(frozen=True, slots=True)
class _Group:
    items: tuple[_Node, ...]


_Node = _Atom | _Repeat | _Group


def compile_fullmatch(source: str) -> Matcher:
    """A test of whether a whole string matches ``source`` (``DOTALL`` semantics)."""
    items, end = _parse(source, 0)
    if end != len(source):
        raise ValueError(f"unbalanced ')' in {source!r}")
    if _stars(items) <= 1:
        regex = re.compile(source, re.DOTALL)
        return lambda subject: regex.fullmatch(subject) is not None
    return _Program(items).fullmatch


def compile_nfa(source: str) -> Matcher:
    """:func:`compile_fullmatch`'s automaton, whatever the expression (for the tests)."""
    items, end = _parse(source, 0)
    if end != len(source):
        raise ValueError(f"unbalanced ')' in {source!r}")
    return _Program(items).fullmatch


def compile_star_glob(pieces: Sequence[str], star: str = ".") -> Matcher:
    """A whole-string test of the literal ``pieces`` joined by wildcards that each match any
    run (maybe empty) of the characters the one-character expression ``star`` matches (``.``:
    any; a negated class such as ``[^.]``: any but those), at :mod:`re`'s speed.

    With one class for every wildcard, the leftmost place of each middle piece is always
    as good as any later one: it leaves the longest rest for the pieces after it (a piece
    holding a character the wildcards exclude has only one place it can start). So each is
    taken leftmost in an atomic group, which is never re-entered: O(n * m), no backtracking
    into earlier wildcards.
    """
    if len(pieces) <= 2:  # at most one wildcard: plain re, O(n * m) already
        return compile_fullmatch(f"{star}*".join(re.escape(p) for p in pieces))
    middle = "".join(f"(?>{star}*?{re.escape(p)})" for p in pieces[1:-1])
    regex = re.compile(f"{re.escape(pieces[0])}{middle}{star}*{re.escape(pieces[-1])}", re.DOTALL)
    return lambda subject: regex.fullmatch(subject) is not None


# --- parsing --------------------------------------------------------------------------------


def _parse(source: str, at: int) -> tuple[tuple[_Node, ...], int]:
    items: list[_Node] = []
    if at == 0 and source.startswith("(?s)"):  # a global flag, only at the very start
        at = 4
    while at < len(source):
        char = source[at]
        node: _Node
        if char == ")":
            break
        if source.startswith("(?:", at):
            inner, at = _parse(source, at + 3)
            if at >= len(source) or source[at] != ")":
                raise ValueError(f"unclosed group in {source!r}")
            node, at = _Group(inner), at + 1
        elif char == "[":
            node, at = _class(source, at)
        elif char == "\\":
            literal, at = _escape(source, at)
            node = _Atom(_CHAR, literal)
        elif char == ".":
            node, at = _Atom(_NOT_IN, frozenset()), at + 1
        elif char in "*?+{}|()^$":
            raise ValueError(f"unsupported {char!r} at {at} in {source!r}")
        else:
            node, at = _Atom(_CHAR, char), at + 1
        if at < len(source) and source[at] in "*?":
            node, at = _Repeat(node, source[at] == "?"), at + 1
        items.append(node)
    return tuple(items), at


def _escape(source: str, at: int) -> tuple[str, int]:
    """The character of the escape at ``at`` (``\\x`` literal, or ``\\xHH``)."""
    if at + 1 >= len(source):
        raise ValueError(f"trailing backslash in {source!r}")
    following = source[at + 1]
    if following == "x":
        return chr(int(source[at + 2 : at + 4], 16)), at + 4
    if following.isalnum():
        raise ValueError(f"unsupported escape \\{following} in {source!r}")
    return following, at + 2


def _class(source: str, at: int) -> tuple[_Atom, int]:
    if not source.startswith("[^", at):
        raise ValueError(f"only negated classes are supported: {source!r}")
    at += 2
    excluded: set[str] = set()
    while at < len(source) and source[at] != "]":
        if source[at] == "\\":
            char, at = _escape(source, at)
        else:
            char, at = source[at], at + 1
        excluded.add(char)
    if at >= len(source):
        raise ValueError(f"unclosed class in {source!r}")
    return _Atom(_NOT_IN, frozenset(excluded)), at + 1


def _stars(items: tuple[_Node, ...]) -> int:
    """How many unbounded repetitions (``*``) the expression holds."""
    count = 0
    for node in items:
        if isinstance(node, _Repeat):
            count += 0 if node.optional_only else 1
            node = node.node
        if isinstance(node, _Group):
            count += _stars(node.items)
    return count


# --- the automaton --------------------------------------------------------------------------


class _Program:
    """The expression as NFA instructions (Thompson's construction), run on every state at
    once: no backtracking."""

    def __init__(self, items: tuple[_Node, ...]) -> None:
        self.kinds: list[int] = []
        self.values: list[object] = []
        self._emit_all(items)
        self._add(_MATCH, None)

    def _add(self, kind: int, value: object) -> int:
        self.kinds.append(kind)
        self.values.append(value)
        return len(self.kinds) - 1

    def _emit_all(self, items: tuple[_Node, ...]) -> None:
        for node in items:
            self._emit(node)

    def _emit(self, node: _Node) -> None:
        if isinstance(node, _Atom):
            self._add(node.kind, node.value)
        elif isinstance(node, _Group):
            self._emit_all(node.items)
        elif node.optional_only:  # split(body, after)
            split = self._add(_SPLIT, None)
            self._emit(node.node)
            self.values[split] = (split + 1, len(self.kinds))
        else:  # split(body, after); body; jump(split)
            split = self._add(_SPLIT, None)
            self._emit(node.node)
            self._add(_JUMP, split)
            self.values[split] = (split + 1, len(self.kinds))

    def fullmatch(self, subject: str) -> bool:
        kinds, values = self.kinds, self.values
        current = self._closure({0})
        for char in subject:
            following: set[int] = set()
            for state in current:
                kind = kinds[state]
                if kind == _CHAR:
                    if values[state] == char:
                        following.add(state + 1)
                elif kind == _NOT_IN and char not in values[state]:  # type: ignore[operator]
                    following.add(state + 1)
            if not following:
                return False
            current = self._closure(following)
        return any(kinds[state] == _MATCH for state in current)

    def _closure(self, states: set[int]) -> set[int]:
        """``states`` and every state reached from them without reading a character."""
        kinds, values = self.kinds, self.values
        seen: set[int] = set()
        stack = list(states)
        while stack:
            state = stack.pop()
            if state in seen:
                continue
            seen.add(state)
            kind = kinds[state]
            if kind == _SPLIT:
                stack.extend(values[state])  # type: ignore[arg-type]
            elif kind == _JUMP:
                stack.append(values[state])  # type: ignore[arg-type]
        return seen
