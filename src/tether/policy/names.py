"""Name globs and label selectors (spec section 1).

Names (agents, runtimes, targets, users, groups, MCP tools) match exactly, or as a
glob where ``*`` matches any run of characters; no other character is special.
A label selector matches when every listed label is present with the listed value
(a list value means any of them, ``"*"`` means present with any value).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tether.policy.errors import PatternError
from tether.policy.linearmatch import compile_star_glob

NameMatcher = Callable[[str], bool]


def compile_name_glob(pattern: str) -> NameMatcher:
    """Compile one name glob; a pattern without ``*`` is an exact comparison."""
    if not isinstance(pattern, str) or pattern == "":
        raise PatternError("a name pattern must be a non-empty string")
    if "*" not in pattern:
        return pattern.__eq__
    if pattern == "*":
        return lambda name: True
    return compile_star_glob(pattern.split("*"))


@dataclass(frozen=True, slots=True)
class NameSet:
    """A list of exact names and globs, split so that exact names are a set lookup."""

    exact: frozenset[str]
    globs: tuple[str, ...]
    matchers: tuple[NameMatcher, ...]

    @classmethod
    def compile(cls, patterns: Iterable[str]) -> NameSet:
        exact: set[str] = set()
        globs: list[str] = []
        matchers: list[NameMatcher] = []
        for pattern in patterns:
            matcher = compile_name_glob(pattern)
            if "*" in pattern:
                globs.append(pattern)
                matchers.append(matcher)
            else:
                exact.add(pattern)
        return cls(frozenset(exact), tuple(globs), tuple(matchers))

    def __call__(self, name: str) -> bool:
        if name in self.exact:
            return True
        return any(matcher(name) for matcher in self.matchers)


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """``{labels: {k: v | [v, ...] | "*"}}``: every listed label must be present and match."""

    required: tuple[tuple[str, frozenset[str] | None], ...]

    @classmethod
    def compile(cls, labels: Mapping[str, object]) -> LabelSelector:
        required: list[tuple[str, frozenset[str] | None]] = []
        for key, value in labels.items():
            if not isinstance(key, str) or not key:
                raise PatternError("label names must be non-empty strings")
            required.append((key, _label_values(key, value)))
        if not required:
            raise PatternError("a label selector needs at least one label")
        return cls(tuple(required))

    def __call__(self, labels: Mapping[str, str]) -> bool:
        for key, allowed in self.required:
            value = labels.get(key)
            if value is None:
                return False
            if allowed is not None and value not in allowed:
                return False
        return True


def _label_values(key: str, value: object) -> frozenset[str] | None:
    if value == "*" or (isinstance(value, list) and "*" in value):  # any of them, * any value
        return None
    if isinstance(value, str):
        return frozenset((value,))
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise PatternError(f'label {key!r}: expected a string, a list of strings or "*"')
