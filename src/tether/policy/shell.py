"""SSH command strings as lists of plain argv vectors (spec 5.2).

An SSH ``exec`` request carries one string that the target's shell would interpret. The policy
can only judge argv vectors, so :func:`parse_command` accepts a command only when it is made of
**plain words** -- text whose meaning does not depend on the shell, the environment or the
file system -- joined by ``|``, ``&&``, ``||``, ``;`` or newlines. Everything else raises
:class:`~tether.policy.errors.ShellConstruct` (reason ``shell-construct``), with a detail naming
the construct. The broker then sends the target :meth:`ParsedCommand.canonical`, the command
re-quoted from the parsed words, never the raw string: whatever the parse got wrong, the target
runs exactly the argv vectors the policy judged, and its shell expands nothing.

How a command is read
=====================

1. Before parsing: denied are a non-string, a command longer than :data:`MAX_COMMAND_LENGTH`
   characters, a blank command, NUL and every control character other than tab and newline
   (C0, DEL, C1 -- including ``\\r``), and lone surrogates (text that is not valid Unicode).
2. The grammar is tree-sitter-bash; a tree with an ``ERROR`` or missing node is denied
   ("does not parse"). The tree is walked with an **allow-list** of node types: ``program``,
   ``list`` (``&&`` ``||``), ``pipeline`` (``|``), ``command``, ``redirected_statement``,
   ``command_name``, ``file_redirect`` and the word nodes ``word``, ``number``, ``raw_string``
   ('...'), ``string`` ("..." holding only ``string_content``) and ``concatenation`` of those.
   Any other node is denied, named after what it is: command or process substitution, variable
   or arithmetic expansion, ANSI-C quoting, assignment, subshell, group, function,
   ``if``/``for``/``while``/``until``/``case``/``select``, ``[ ]``/``[[ ]]``, ``(( ))``,
   negation ``!``, here-document, here-string, ``&``, ``|&``, ``;;``, comments, and
   ``export``/``local``/``declare``/``readonly``/``typeset``/``unset`` (bash parses their
   ``a=b`` arguments as assignments).
3. **Words are decoded from the source bytes here, not taken from tree-sitter**: single quotes
   are literal; inside double quotes a backslash escapes only ``$`` `````` ``"`` ``\\`` and
   newline; unquoted, a backslash escapes any character (``r\\m`` is ``rm``). Denied inside any
   word: an unquoted or double-quoted ``$`` or backtick (so also ``"$(x)"``; ``'$(x)'`` and
   ``\\$x`` are literal and allowed), unquoted glob and brace characters ``* ? [ ] { }`` (the
   spec lists ``* ? [ {``; the closing ones are denied too, spec silent), an unquoted ``~`` at
   the start of a word or after an unquoted ``=`` or ``:`` (bash expands ``a=~/x`` and
   ``PATH=a:~/b`` even as arguments), a ``#`` starting a word, and any unquoted blank or
   metacharacter ``| & ; < > ( )`` (it would mean tree-sitter and sh disagree on the word:
   tree-sitter reads ``a<newline>\\|`` as one command with the word ``<newline>|``).
4. **Coverage**: every byte of the command must belong to a node that was read, or be a blank
   (space, tab, newline) or a line continuation between them. tree-sitter silently skips
   ``\\<space>`` between words (sh reads ``ls \\ -la`` as ``ls`` and `` -la``); the coverage
   check denies that. Two words of one command need a real blank between them: sh joins
   ``r\\<newline>m`` into ``rm``, tree-sitter makes two words, so it is denied. Two word nodes
   with nothing at all between them are one shell word (tree-sitter splits ``'a'\\x`` but not
   ``'a'\\'``): their whole span is decoded again as one word, as sh reads it.
   The nesting of lists and pipelines in the tree is not used (tree-sitter-bash gets their
   precedence wrong: ``a | b | c && d`` comes as a pipeline holding a list): commands and
   operators are taken in source order -- the coverage check makes sure none is missed --
   and the shell applies its own precedence to the canonical text.
5. Redirections: allowed are ``>``, ``>>`` and ``<`` to or from ``/dev/null`` and the descriptor
   duplications ``N>&M`` / ``N<&M`` with single-digit descriptors (``2>&1``). Denied: any other
   file, ``&>``, ``&>>``, ``>|``, ``<>``, closing (``>&-``), ``>&word`` (bash: a file), and
   descriptors above 9 (dash reads ``10>x`` as the word ``10``). They are kept, in order, as
   canonical text (``2>/dev/null``, ``2>&1``) after the words of their simple command: where
   a redirection stands among the words does not change its meaning, their order does.
   A command made only of redirections is denied. tree-sitter hangs the words after a
   redirection on it (``ls >/dev/null -la``) and a redirection after a list on the whole list
   (``a && b 2>/dev/null``); both are read as sh reads them (``-la`` is an argument, the
   redirection is ``b``'s). Where tree-sitter reads a descriptor number as a word
   (``ls 1>&2 0<&3``: the argument ``0``, then ``<&3``) the command is denied.
6. The command name (``argv[0]``): an unquoted reserved word (``if``, ``time``, ``coproc``,
   ``function``, ``select``, zsh's ``repeat``/``foreach``/``noglob`` ...) is denied -- it is
   not a simple command; an unquoted ``NAME=`` prefix is an assignment and is denied.

Decisions where the spec is silent (each the deny side, or the shell's own behaviour):

* **Comments** are denied (not dropped): an agent rarely needs one, and denying them leaves
  no question of where a comment ends.
* **Line continuations** (backslash-newline) are joined, as sh does, inside quotes and between
  words (``ls \\<newline> -la``); inside an unquoted word they are denied (see 4).
* **Newlines** separate commands like ``;`` and come back as ``;`` in
  :attr:`ParsedCommand.operators`; a newline after ``&&``, ``||`` or ``|`` continues the list,
  as in sh. A trailing ``;`` or newline is dropped; an empty command (``;;``, ``; ;``, a
  leading ``;``) does not parse.
* **bash extensions** that POSIX sh lacks are denied through the allow-list; a quoted reserved
  word (``'time' ls``) is an ordinary command name, as in sh.
* Known false denials, from tree-sitter's grammar (safe, rare): a word that begins with an
  escaped blank (``ls \\ x``), ``a && b 1>&2 0<&3``-style descriptor numbers after a word.

Canonical text
==============

:func:`quote_word` leaves a word bare only if it is made of ``A-Z a-z 0-9 _ @ + , . / : -``
and ``=`` (not first: zsh expands ``=cmd``); a command name only if it is made of
``A-Z a-z 0-9 _ . / -`` and is not a reserved word or declaration builtin of sh, bash, ksh or
zsh (tree-sitter cannot read a bare ``a@b`` as a command); never ``-`` alone (tree-sitter drops
the ``-`` of ``cat - 2>&1``, which the coverage check then denies). Anything else goes in
single quotes (``'`` itself as ``'"'"'``), the empty word as ``''``; so ``~``, ``%``, ``!``,
``^``, ``#`` and every non-ASCII character are always quoted. ``shlex.split`` of each simple
command's text gives back its argv and redirections, and ``parse_command(p.canonical()) == p``.
The target shell is assumed to be a POSIX shell (sh, dash, bash, ksh, zsh); fish and csh read
quotes differently.

Pure: no I/O. Parsing costs one tree-sitter parse plus a walk in Python that loops (no
recursion) over tree-sitter's left-nested lists. Results and deny details for commands of up
to :data:`CACHEABLE_LENGTH` characters are kept in an LRU cache of :data:`CACHE_SIZE` entries
(results are immutable). One tree-sitter parser per thread (a parser is not safe to share).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

import tree_sitter
import tree_sitter_bash

from tether.policy.errors import ShellConstruct

__all__ = [
    "CACHEABLE_LENGTH",
    "CACHE_SIZE",
    "MAX_COMMAND_LENGTH",
    "OPERATORS",
    "ParsedCommand",
    "SimpleCommand",
    "parse_command",
    "quote_word",
]

MAX_COMMAND_LENGTH: Final = 65536
"""Longest accepted command, in characters."""
CACHEABLE_LENGTH: Final = 512
"""Longest command whose parse result is cached."""
CACHE_SIZE: Final = 2048
"""Entries of the parse cache: at most ~11 KiB each (512 characters of two-letter words), so
an agent sending distinct commands can pin ~22 MiB at most."""
OPERATORS: Final = frozenset({"|", "&&", "||", ";"})

_LANGUAGE: Final = tree_sitter.Language(tree_sitter_bash.language())


class _ThreadParser(threading.local):
    def __init__(self) -> None:
        self.parser = tree_sitter.Parser(_LANGUAGE)


_PARSERS: Final = _ThreadParser()

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
    """``word`` as one POSIX shell word that expands to itself (see the module docstring)."""
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


# --- entry point ----------------------------------------------------------------------------


def parse_command(command: str) -> ParsedCommand:
    """Parse an SSH command string; raise :class:`ShellConstruct` unless it is plain words."""
    if not isinstance(command, str):
        raise ShellConstruct("the command is not a string")
    if len(command) > CACHEABLE_LENGTH:
        result = _parse_or_detail(command)
    else:
        result = _parse_cached(command)
    if isinstance(result, str):
        raise ShellConstruct(result)
    return result


def _parse_or_detail(command: str) -> ParsedCommand | str:
    try:
        return _parse(command)
    except ShellConstruct as exc:
        return exc.detail
    except RecursionError:  # defence in depth: the walk loops over the deep (left) nesting
        return "does not parse (nested too deeply)"


_parse_cached: Final = lru_cache(maxsize=CACHE_SIZE)(_parse_or_detail)


# Every byte of a multi-byte UTF-8 character (all >= 0x80) as an ASCII letter.
_ASCII_LETTERS: Final = bytes(range(128)) + b"a" * 128


def _grammar_bytes(source: bytes) -> bytes:
    """What the grammar parses: ``source`` with every non-ASCII byte replaced by ``a``.

    tree-sitter-bash's external scanner crashes the process (a segmentation fault, found by
    fuzzing) on some non-BMP characters, e.g. ``{`` followed by U+D02C3. No shell gives a
    non-ASCII character any syntactic meaning (metacharacters, quotes, ``$`` and blanks
    are ASCII), so parsing letters in their place yields the same structure, at the same
    byte offsets; words are then decoded from the original bytes.
    """
    return source if source.isascii() else source.translate(_ASCII_LETTERS)


def _parse(command: str) -> ParsedCommand:
    _check_text(command)
    try:
        source = command.encode("utf-8")
    except UnicodeEncodeError:
        raise ShellConstruct("text that is not valid Unicode (a lone surrogate)") from None
    root = _PARSERS.parser.parse(_grammar_bytes(source)).root_node
    if root.has_error:  # an ERROR or a missing node anywhere in the tree
        raise ShellConstruct("does not parse")
    walker = _Walker(source, command if command.isascii() else None)
    walker.program(root)
    walker.finish()
    return ParsedCommand(tuple(walker.commands), tuple(walker.operators))


def _check_text(command: str) -> None:
    if len(command) > MAX_COMMAND_LENGTH:
        raise ShellConstruct(f"command longer than {MAX_COMMAND_LENGTH} characters")
    bad = _BAD_CHAR.search(command)
    if bad is not None:
        char = bad.group()
        raise ShellConstruct("NUL character" if char == "\x00" else f"control character {char!r}")
    if not command.strip(" \t\n"):
        raise ShellConstruct("empty command")


# --- words ----------------------------------------------------------------------------------

_PLAIN_WORD: Final = re.compile(r"[A-Za-z0-9_@%+=:,./!^-]+")
_GLOB_CHARS: Final = frozenset("*?[]")
_BRACE_CHARS: Final = frozenset("{}")
_METACHARS: Final = frozenset(" \t\n|&;<>()")
_DOUBLE_QUOTE_ESCAPES: Final = frozenset('$`"\\\n')


def _decode_word(text: str) -> str:
    """Quote removal for one shell word, denying anything but literal text."""
    if _PLAIN_WORD.fullmatch(text):
        return text
    out: list[str] = []
    index = 0
    while index < len(text):
        index = _decode_step(text, index, out)
    return "".join(out)


def _decode_step(text: str, index: int, out: list[str]) -> int:
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
    _check_unquoted(text, index, out)
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


def _check_unquoted(text: str, index: int, out: list[str]) -> None:
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
    if char == "#" and index == 0:
        raise ShellConstruct("comment")
    if char == "~":
        before = "".join(out)
        if not before or before[-1] in "=:":
            raise ShellConstruct("leading ~ (tilde expansion)")


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


# --- the tree walk --------------------------------------------------------------------------

_Node = tree_sitter.Node

_WORD_NODES: Final = frozenset({"word", "number", "raw_string", "string", "concatenation"})
_LEAF_WORD_NODES: Final = frozenset({"word", "number", "raw_string"})
# Tokens tree-sitter makes of some arguments: `==` and `=~` (test operators), and `\$` after a
# quoted string (`'a'\$`). Words to sh; their text is decoded like any word, so an unescaped
# `$` is still denied.
_ARGUMENT_TOKENS: Final = frozenset({"==", "=~", "$"})
_SIMPLE_NODES: Final = frozenset({"command", "redirected_statement"})
_STATEMENT_NODES: Final = _SIMPLE_NODES | {"list", "pipeline"}
_LIST_OPERATORS: Final = frozenset({"&&", "||"})
_PIPE_OPERATORS: Final = frozenset({"|"})
_LIST_BODIES: Final = frozenset({"list", "pipeline"})
_ANY_NODE: Final = frozenset({"redirected_statement"})
_OPERAND, _OPERATOR, _REOPEN = 0, 1, 2  # tasks of the statement walk
_STRING_PARTS: Final = frozenset({'"', "string_content"})
_FILE_REDIRECTS: Final = frozenset({">", ">>", "<"})
_DUP_REDIRECTS: Final = frozenset({">&", "<&"})
_DIGITS: Final = frozenset(b"0123456789")
_ASSIGNMENT: Final = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*\+?=")
_GAP: Final = re.compile(rb"(?:[ \t\n]|\\\n)*")
_CONTINUATION: Final = re.compile(rb"\\\n")

_DENIED: Final = {
    "command_substitution": "command substitution",
    "process_substitution": "process substitution",
    "simple_expansion": "variable expansion",
    "expansion": "variable expansion",
    "$": "variable expansion",
    "arithmetic_expansion": "arithmetic expansion",
    "ansi_c_string": "ANSI-C quoting $'..'",
    "translated_string": 'locale translation $".."',
    "brace_expression": "brace expansion",
    "extglob_pattern": "extended glob",
    "variable_assignment": "variable assignment",
    "variable_assignments": "variable assignment",
    "array": "array assignment",
    "declaration_command": "declaration command (export, local, declare, readonly, typeset)",
    "unset_command": "unset command",
    "subshell": "subshell",
    "compound_statement": "group { ..; } or arithmetic command (( ))",
    "function_definition": "function definition",
    "if_statement": "compound command 'if'",
    "for_statement": "compound command 'for' or 'select'",
    "c_style_for_statement": "compound command 'for (( ))'",
    "while_statement": "compound command 'while' or 'until'",
    "case_statement": "compound command 'case'",
    "test_command": "test command [ ] or [[ ]]",
    "negated_command": "negation !",
    "heredoc_redirect": "here-document",
    "herestring_redirect": "here-string",
    "comment": "comment",
    "ERROR": "does not parse",
    ">&-": "redirection >&- (closes a descriptor)",
    "<&-": "redirection <&- (closes a descriptor)",
    "&": "background &",
    "|&": "|& (pipes standard error)",
    ";;": "case terminator ;;",
    ";&": "case terminator ;&",
    ";;&": "case terminator ;;&",
}


def _denied(node: _Node) -> ShellConstruct:
    if node.is_missing:
        return ShellConstruct(f"does not parse (missing {node.type!r})")
    detail = _DENIED.get(node.type)
    if detail is None:
        detail = f"unsupported shell syntax ({node.type})"
    return ShellConstruct(detail)


class _Walker:
    """Walks an allow-listed tree, collecting simple commands and operators.

    Children are visited in source order, and every span that is read goes through
    :meth:`advance`, which checks the text between it and the previous span: that is the
    coverage check, done on the fly.
    """

    __slots__ = (
        "commands",
        "digits_end",
        "first_item",
        "operators",
        "position",
        "source",
        "text",
        "word_start",
    )

    def __init__(self, source: bytes, text: str | None) -> None:
        self.source = source
        self.text = text  # the command itself when byte and character offsets agree (ASCII)
        self.commands: list[SimpleCommand] = []
        self.operators: list[str] = []
        self.position = 0  # end of the last span read
        self.first_item = True  # no word or redirection of the current command read yet
        self.digits_end = -1  # end of the last word if it was all digits
        self.word_start = -1  # start of the last word read, -1 after a redirection

    def advance(self, start: int, end: int, *, blank: bool, newline: bool) -> None:
        """Read ``source[start:end]``; the gap before it must be blanks (see ``_check_gap``)."""
        position = self.position
        if start != position:
            gap = self.source[position:start]
            if gap != b" ":
                _check_gap(gap, start < position, blank=blank, newline=newline)
        elif blank:
            raise ShellConstruct("does not parse (words not separated by a blank)")
        self.position = end

    def item(self, start: int, end: int, *, blank: bool) -> None:
        """Read a word or redirection: the first of a command may follow a newline."""
        if self.first_item:
            self.first_item = False
            self.advance(start, end, blank=False, newline=True)
        else:
            self.advance(start, end, blank=blank, newline=False)

    def finish(self) -> None:
        if not _GAP.fullmatch(self.source, self.position):
            raise _skipped()

    # structure: program, list, pipeline

    def program(self, root: _Node) -> None:
        seen = separated = False
        for child in root.children:
            kind = child.type
            if kind in _STATEMENT_NODES:
                if seen:
                    gap = self.source[self.position : child.start_byte]
                    if not separated and not _has_bare_newline(gap):
                        raise ShellConstruct("does not parse (commands without a separator)")
                    self.operators.append(";")
                self.statement(child, kind)
                seen, separated = True, False
            elif kind == ";" and seen and not separated:
                self.operator(child, kind)
                separated = True
            elif kind == ";":
                raise ShellConstruct("empty command before ';'")
            else:
                raise _denied(child)
        if not seen:
            raise ShellConstruct("empty command")

    def statement(self, node: _Node, kind: str) -> None:
        """Read a statement: lists, pipelines and simple commands, with an explicit stack.

        tree-sitter nests ``a && b && c`` (and redirected lists, below) on the left, one level
        per operator, so a recursive walk would run out of stack on long chains.
        """
        stack: list[tuple[int, _Node, frozenset[str]]] = [(_OPERAND, node, _STATEMENT_NODES)]
        while stack:
            task, node, allowed = stack.pop()
            kind = node.type
            if kind not in allowed:
                raise _denied(node)
            if task == _OPERATOR:
                self.operator(node, kind)
                self.operators.append(kind)
            elif task == _REOPEN:
                self.reopen(node)
            elif kind == "command":
                self.simple(node, None)
            elif kind == "redirected_statement":
                self.redirected(node, stack)
            else:
                _push_sequence(node, kind, stack)

    def operator(self, node: _Node, kind: str) -> None:
        """Read an operator token: no newline before it, its span exactly its characters."""
        start, end = node.start_byte, node.end_byte
        if end - start != len(kind):
            raise ShellConstruct(f"does not parse (split operator {kind!r})")
        self.advance(start, end, blank=False, newline=False)

    # simple commands

    def redirected(self, node: _Node, stack: list[tuple[int, _Node, frozenset[str]]]) -> None:
        """A command with redirections -- or, to tree-sitter, a list with redirections.

        ``a && b 2>/dev/null`` comes as a redirected list. In sh a redirection belongs to one
        simple command (nothing here can group commands): the last one before it. So the list
        is read first, then its last command is reopened to take the redirections and any
        words after them.
        """
        body = node.children[0]
        body_kind = body.type
        if body_kind == "command":
            self.simple(body, node)
        elif body_kind in _LIST_BODIES:
            stack.append((_REOPEN, node, _ANY_NODE))
            stack.append((_OPERAND, body, _LIST_BODIES))
        else:
            raise _denied(body) if body_kind in _DENIED else _no_command()

    def simple(self, command: _Node, redirected: _Node | None) -> None:
        """One simple command: a ``command`` node and the redirections hung on it, if any."""
        argv: list[str] = []
        redirects: list[str] = []
        self.first_item = True
        self.command(command, argv, redirects)
        if redirected is not None:
            self.redirections(redirected, argv, redirects)
        if not argv:
            raise _no_command()
        self.commands.append(SimpleCommand(tuple(argv), tuple(redirects)))

    def reopen(self, redirected: _Node) -> None:
        """Give the redirections of a redirected list to the last command read."""
        last = self.commands.pop()
        argv, redirects = list(last.argv), list(last.redirects)
        self.redirections(redirected, argv, redirects)
        if not argv:  # a newline split the command before its redirections
            raise _no_command()
        self.commands.append(SimpleCommand(tuple(argv), tuple(redirects)))

    def redirections(self, redirected: _Node, argv: list[str], redirects: list[str]) -> None:
        for child in redirected.children[1:]:
            if child.type != "file_redirect":
                raise _denied(child)
            self.redirect(child, argv, redirects)

    def command(self, node: _Node, argv: list[str], redirects: list[str]) -> None:
        for child in node.children:
            kind = child.type
            if kind == "command_name" and not argv:
                self.command_name(child, argv, redirects)
            elif (kind in _WORD_NODES or kind in _ARGUMENT_TOKENS) and argv:
                self.add_word(child, argv, redirects)
            elif kind == "file_redirect":
                self.redirect(child, argv, redirects)
            elif kind in _WORD_NODES or kind == "command_name":
                raise ShellConstruct("does not parse (words around the command name)")
            else:
                raise _denied(child)

    def command_name(self, node: _Node, argv: list[str], redirects: list[str]) -> None:
        children = node.children
        if len(children) != 1 or children[0].type not in _WORD_NODES:
            raise _denied(children[-1] if children else node)
        self.add_word(children[0], argv, redirects)

    def add_word(self, node: _Node, argv: list[str], redirects: list[str]) -> None:
        """Read one word node (its type already allowed) into ``argv``.

        A node that starts right where the previous word ended, without a blank, is the same
        shell word: tree-sitter splits ``'a'\\x`` in two (but not ``'a'\\'``). The whole span
        is then decoded again as one word, as sh reads it.
        """
        if node.child_count:
            _check_word_tree(node)
        start, end = node.start_byte, node.end_byte
        position = self.position
        if start == position and self.word_start >= 0 and not self.first_item:
            start = self.word_start
            self.position = end
            argv[-1] = self.decode(start, end)
        else:
            if start - position == 1 and self.source[position] == 0x20 and not self.first_item:
                self.position = end  # the common case: one space after the previous word
            else:
                self.split_at_newline(start, argv, redirects)
                self.item(start, end, blank=True)
            argv.append(self.decode(start, end))
        self.word_start = start
        raw = self.source[start:end]
        self.digits_end = end if raw.isdigit() else -1
        if len(argv) == 1:
            _check_command_name(raw)

    def split_at_newline(self, start: int, argv: list[str], redirects: list[str]) -> None:
        """End the simple command if a newline comes before its next word or redirection.

        tree-sitter can run one command over a line break (``a | b | c<newline>d 2>&1`` holds
        the command ``c<newline>d``); to sh the newline ends ``c`` like a ``;``, so ``d`` starts
        a new command (and is checked as a command name).
        """
        position = self.position
        if self.first_item or start <= position:
            return
        if not _has_bare_newline(self.source[position:start]):
            return
        if not argv:
            raise _no_command()
        self.commands.append(SimpleCommand(tuple(argv), tuple(redirects)))
        self.operators.append(";")
        argv.clear()
        redirects.clear()
        self.first_item = True
        self.word_start = -1

    def decode(self, start: int, end: int) -> str:
        """The decoded shell word of ``source[start:end]``."""
        if self.text is not None:
            text = self.text[start:end]
            return text if _PLAIN_WORD.fullmatch(text) else _decode_word(text)
        try:
            return _decode_word(self.source[start:end].decode("utf-8"))
        except UnicodeDecodeError:
            raise ShellConstruct("does not parse (a word boundary inside a character)") from None

    # redirections

    def redirect(self, node: _Node, argv: list[str], redirects: list[str]) -> None:
        """One ``file_redirect``: the redirection, then any words tree-sitter hung on it."""
        children = node.children
        first = children[0]
        has_fd = first.type == "file_descriptor"
        if len(children) < 2 + has_fd:
            raise _denied(children[-1])
        operator, target = children[has_fd], children[1 + has_fd]
        kind = operator.type
        fd = self.descriptor(first, operator) if has_fd else ""
        if not has_fd and first.start_byte == self.digits_end:
            # `ls 1>&2 0<&3`: sh reads `0<&3` as a redirection of descriptor 0, tree-sitter
            # as the argument `0` followed by `<&3`.
            raise ShellConstruct("does not parse (a descriptor number read as a word)")
        if operator.end_byte - operator.start_byte != len(kind):
            raise ShellConstruct(f"does not parse (split operator {kind!r})")
        self.split_at_newline(first.start_byte, argv, redirects)
        self.item(first.start_byte, operator.end_byte, blank=has_fd)
        self.word_start = -1  # a word right after the target is not part of a previous word
        redirects.append(fd + kind + self.redirect_target(kind, operator, target))
        for child in children[2 + has_fd :]:  # `ls >/dev/null -la`: -la is hung on the redirect
            if child.type not in _WORD_NODES or not argv:
                raise _denied(child)
            self.add_word(child, argv, redirects)

    def descriptor(self, descriptor: _Node, operator: _Node) -> str:
        start, end = descriptor.start_byte, descriptor.end_byte
        raw = self.source[start:end]
        if end - start != 1 or raw[0] not in _DIGITS or end != operator.start_byte:
            raise ShellConstruct(f"redirection of descriptor {raw.decode(errors='replace')!r}")
        return raw.decode()

    def redirect_target(self, kind: str, operator: _Node, target: _Node) -> str:
        if target.type not in _WORD_NODES:
            raise _denied(target)
        if kind in _DUP_REDIRECTS:
            start, end = target.start_byte, target.end_byte
            raw = self.source[start:end]
            if end - start != 1 or raw[0] not in _DIGITS:
                raise ShellConstruct(f"redirection {kind} to something other than a descriptor")
            self.advance(start, end, blank=False, newline=False)
            return raw.decode()
        if kind not in _FILE_REDIRECTS:
            raise _denied(operator) if kind in _DENIED else ShellConstruct(f"redirection {kind}")
        if target.child_count:
            _check_word_tree(target)
        start, end = target.start_byte, target.end_byte
        self.advance(start, end, blank=False, newline=False)
        path = self.decode(start, end)
        if path != "/dev/null":
            raise ShellConstruct(f"redirection {kind} to a file other than /dev/null")
        return path


def _check_gap(gap: bytes, overlap: bool, *, blank: bool, newline: bool) -> None:
    """The text between two read spans: blanks and line continuations only.

    ``blank``: at least one space or tab is required (between two words). ``newline``: a
    newline (not a line continuation) is allowed (before the first word of a command).
    """
    if overlap or not _GAP.fullmatch(gap):
        raise _skipped()
    if not newline and _has_bare_newline(gap):
        raise ShellConstruct("does not parse (newline inside a command)")
    if blank and b" " not in gap and b"\t" not in gap:
        raise ShellConstruct("line continuation inside a word")


def _push_sequence(node: _Node, kind: str, stack: list[tuple[int, _Node, frozenset[str]]]) -> None:
    """Queue ``a && b || c`` or ``a | b``: operands and operators alternate."""
    children = node.children
    if len(children) % 2 == 0:
        raise ShellConstruct("does not parse (operator without a command after it)")
    operators = _LIST_OPERATORS if kind == "list" else _PIPE_OPERATORS
    for index in range(len(children) - 1, -1, -1):
        if index % 2:
            stack.append((_OPERATOR, children[index], operators))
        else:  # any statement: tree-sitter may nest a list in a pipeline (`a | b | c && d`)
            stack.append((_OPERAND, children[index], _STATEMENT_NODES))


def _check_command_name(raw: bytes) -> None:
    """Deny a command name that sh would not read as a plain name (raw source bytes)."""
    if b"=" in raw and _ASSIGNMENT.match(raw):
        raise ShellConstruct("variable assignment")
    if raw in _RESERVED_WORD_BYTES:
        raise ShellConstruct(f"reserved word {raw.decode()!r} as a command")


def _no_command() -> ShellConstruct:
    return ShellConstruct("redirection without a command")


def _skipped() -> ShellConstruct:
    return ShellConstruct("does not parse (text the grammar skipped)")


def _has_bare_newline(gap: bytes) -> bool:
    """A newline in ``gap`` that is not part of a line continuation."""
    return b"\n" in gap and b"\n" in _CONTINUATION.sub(b"", gap)


def _check_word_tree(node: _Node) -> None:
    """A word node made only of literal parts (``string`` with nothing but its content)."""
    kind = node.type
    if kind in _LEAF_WORD_NODES:
        if node.child_count:
            raise _denied(node.children[0])
    elif kind == "string":
        for child in node.children:
            if child.type not in _STRING_PARTS or child.child_count:
                raise _denied(child)
    elif kind == "concatenation":
        for child in node.children:
            if child.type == "concatenation":
                raise _denied(child)
            _check_word_tree(child)
    else:
        raise _denied(node)
