"""Words of an SSH command: quoted for the canonical text, decoded from the source.

What is allowed in a word, how it is decoded and how it is quoted are documented in
:mod:`tether.policy.shell` ("How a command is read", point 3, and "Canonical text").
:class:`SimpleCommand` and :class:`ParsedCommand`, the parse result, live here with
:func:`quote_word` because their canonical text is made of quoted words; the public place to
import them from is :mod:`tether.policy.shell`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from tether.policy.errors import ShellConstruct

OPERATORS: Final = frozenset({"|", "&&", "||", ";"})

# --- the result -----------------------------------------------------------------------------

# Left unquoted by quote_word. A command name keeps to fewer characters: tree-sitter does not
# parse `a@` or `a+:` as a command; an argument may also hold '=' (not first: zsh's `=cmd`).
_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9_./-]+")
_SAFE_ARGUMENT: Final = re.compile(r"[A-Za-z0-9_@+,./:-][A-Za-z0-9_@+,./:=-]*")
# Reserved words of sh, bash, ksh and zsh: never an ordinary command name when unquoted.
_RESERVED_WORDS: Final = frozenset(
    {
        "!", "{", "}", "[[", "]]", "case", "coproc", "do", "done", "elif", "else", "end",
        "esac", "fi", "for", "foreach", "function", "if", "in", "nocorrect", "noglob",
        "repeat", "select", "then", "time", "until", "while",
    }
)  # fmt: skip
# Quoted as command names: reserved words, and the builtins bash parses as declarations
# (their `a=b` arguments are assignments to tree-sitter and to bash).
_QUOTED_NAMES: Final = _RESERVED_WORDS | {
    "declare", "export", "local", "readonly", "typeset", "unset",
}  # fmt: skip
_RESERVED_WORD_BYTES: Final = frozenset(word.encode() for word in _RESERVED_WORDS)
_REDIRECT_FORM: Final = re.compile(r"[0-9]?(?:(?:>|>>|<)/dev/null|[<>]&[0-9])")
_BAD_CHAR: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def quote_word(word: str, *, command_name: bool = False) -> str:
    """``word`` as one POSIX shell word that expands to itself (see :mod:`tether.policy.shell`)."""
    if command_name:
        bare = _SAFE_NAME.fullmatch(word) is not None and word not in _QUOTED_NAMES
    else:
        bare = _SAFE_ARGUMENT.fullmatch(word) is not None
    if bare and word != "-":  # tree-sitter loses a bare `-` before `2>&1`
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


@dataclass(frozen=True, slots=True)
class SimpleCommand:
    """One simple command: its argv (quotes removed) and its allowed redirections."""

    argv: tuple[str, ...]
    redirects: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            joined = "".join(self.argv)  # also: every word is a str
        except TypeError:
            joined = "\x00"
        if not self.argv or _BAD_CHAR.search(joined):
            raise ValueError("argv must be non-empty strings without control characters")
        for redirect in self.redirects:
            if not isinstance(redirect, str) or not _REDIRECT_FORM.fullmatch(redirect):
                raise ValueError(f"not an allowed redirection: {redirect!r}")

    def canonical(self) -> str:
        """This command as shell text that expands to exactly ``argv`` and ``redirects``."""
        words = [quote_word(self.argv[0], command_name=True)]
        words.extend(quote_word(word) for word in self.argv[1:])
        words.extend(self.redirects)
        return " ".join(words)


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    """Simple commands joined by ``|``, ``&&``, ``||`` or ``;`` (newlines become ``;``)."""

    commands: tuple[SimpleCommand, ...]
    operators: tuple[str, ...] = ()
    _canonical: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.commands or len(self.operators) != len(self.commands) - 1:
            raise ValueError("need at least one command and one operator between two commands")
        if not OPERATORS.issuperset(self.operators):
            raise ValueError(f"operators must be among {sorted(OPERATORS)}")
        # computed once: parse results are cached and canonical() is asked on every request
        parts = [self.commands[0].canonical()]
        for operator, command in zip(self.operators, self.commands[1:], strict=True):
            parts.append(("; " if operator == ";" else f" {operator} ") + command.canonical())
        object.__setattr__(self, "_canonical", "".join(parts))

    def canonical(self) -> str:
        """The text the SSH front-end sends: every word re-quoted, nothing left to expand."""
        return self._canonical


# --- words ----------------------------------------------------------------------------------

_PLAIN_WORD: Final = re.compile(r"[A-Za-z0-9_@%+=:,./!^-]+")
_GLOB_CHARS: Final = frozenset("*?[]")
_BRACE_CHARS: Final = frozenset("{}")
_METACHARS: Final = frozenset(" \t\n|&;<>()")
_DOUBLE_QUOTE_ESCAPES: Final = frozenset('$`"\\\n')


def _decode_word(text: str, before: str | None = None) -> str:
    """Quote removal for one shell word, denying anything but literal text.

    ``before``: what the earlier part of the same shell word decoded to, when ``text`` is
    the rest of it (tree-sitter splits ``'a'\\x`` in two nodes). The checks that depend on
    the place in the word (a ``#`` first, a ``~`` first or after ``=`` or ``:``) see it, so
    a word decoded part by part, each part once, reads as the whole word decoded at once
    (which, done again for every part, took quadratic time: minutes for a 64 KiB word).
    """
    if _PLAIN_WORD.fullmatch(text):
        return text
    out: list[str] = []
    index = 0
    while index < len(text):
        index = _decode_step(text, index, out, before)
    return "".join(out)


def _decode_step(text: str, index: int, out: list[str], before: str | None) -> int:
    """Decode the quoted part, escape or character at ``index``; return the next index."""
    char = text[index]
    if char == "'":
        end = text.find("'", index + 1)
        if end < 0:
            raise ShellConstruct("unterminated single quote")
        out.append(text[index + 1 : end])
        return end + 1
    if char == '"':
        return _decode_double_quoted(text, index + 1, out)
    if char == "\\":
        if index + 1 >= len(text):
            raise ShellConstruct("backslash at the end of a word")
        if text[index + 1] != "\n":  # backslash-newline is a line continuation
            out.append(text[index + 1])
        return index + 2
    _check_unquoted(text, index, out, before)
    out.append(char)
    return index + 1


def _decode_double_quoted(text: str, index: int, out: list[str]) -> int:
    """Decode ``"..."`` from just after the opening quote; return the index after the closing."""
    while index < len(text):
        char = text[index]
        if char == '"':
            return index + 1
        if char == "\\" and text[index + 1 : index + 2] in _DOUBLE_QUOTE_ESCAPES:
            if text[index + 1] != "\n":
                out.append(text[index + 1])
            index += 2
            continue
        if char in "$`":
            raise ShellConstruct(_dollar_detail(text, index) + " inside double quotes")
        out.append(char)
        index += 1
    raise ShellConstruct("unterminated double quote")


def _check_unquoted(text: str, index: int, out: list[str], before: str | None) -> None:
    """Deny an unquoted character that the shell would not take literally."""
    char = text[index]
    if char in "$`":
        raise ShellConstruct(_dollar_detail(text, index))
    if char in _GLOB_CHARS:
        raise ShellConstruct(f"unquoted glob character {char!r}")
    if char in _BRACE_CHARS:
        raise ShellConstruct(f"unquoted brace character {char!r}")
    if char in _METACHARS:
        raise ShellConstruct(f"unexpected shell metacharacter {char!r} in a word")
    if char == "#" and index == 0 and before is None:
        raise ShellConstruct("comment")
    if char == "~":
        last = _last_char(out) or (before or "")[-1:]
        if not last or last in "=:":
            raise ShellConstruct("leading ~ (tilde expansion)")


def _last_char(out: list[str]) -> str:
    """The last character decoded so far ('' if none), without joining ``out``.

    Walking back stops at the last non-empty piece, which a ``~`` then follows: each empty
    piece (``''``) is passed over once, so a word of ``~`` is still read in linear time
    (joining ``out`` for every ``~`` was quadratic).
    """
    for piece in reversed(out):
        if piece:
            return piece[-1]
    return ""


def _dollar_detail(text: str, index: int) -> str:
    if text[index] == "`":
        return "command substitution (backticks)"
    follower = text[index + 1 : index + 3]
    if follower.startswith("(("):
        return "arithmetic expansion"
    if follower.startswith("("):
        return "command substitution"
    if follower.startswith("'"):
        return "ANSI-C quoting $'..'"
    if follower.startswith('"'):
        return 'locale translation $".."'
    return "variable expansion"
