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
   ``'a'\\'``): the second is decoded as the rest of the first, as sh reads it, each node
   once (decoding the whole span again for each node took minutes on a 64 KiB word).
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
7. Builtins that evaluate a literal word as code: ``let``, and an array subscript ``a[..]``
   in a name given to ``printf -v``, ``read``, ``test -v``/``[ -v``, ``wait -p``, the
   declaration builtins (and their integer attribute) ... are denied; see
   :mod:`tether.policy.shell_builtins`. Quoting cannot help there: bash expands the
   subscript itself.

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
* **A lone ``-`` the grammar drops is read again**: tree-sitter-bash skips the ``-`` word of
  ``cat - 2>&1`` (before a numbered redirection), which the coverage check would deny as
  skipped text. When the skipped text is exactly a ``-`` between blanks, the command is
  parsed again with that ``-`` written ``'-'`` (the same word to every shell, which the
  grammar keeps), at most :data:`MAX_DROPPED_DASHES` times; any other skipped text is denied.

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

import threading
from functools import lru_cache
from typing import Final

import tree_sitter
import tree_sitter_bash

from tether.policy.errors import ShellConstruct
from tether.policy.shell_builtins import check_builtin
from tether.policy.shell_nodes import DroppedDash
from tether.policy.shell_walk import _Walker
from tether.policy.shell_words import (
    _BAD_CHAR,
    OPERATORS,
    ParsedCommand,
    SimpleCommand,
    quote_word,
)

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
# Lone `-` words the grammar drops that are read again quoted (`cat - 2>&1`), per command.
MAX_DROPPED_DASHES: Final = 16
"""Longest command whose parse result is cached."""
CACHE_SIZE: Final = 2048
"""Entries of the parse cache: at most ~11 KiB each (512 characters of two-letter words), so
an agent sending distinct commands can pin ~22 MiB at most."""

_LANGUAGE: Final = tree_sitter.Language(tree_sitter_bash.language())


class _ThreadParser(threading.local):
    def __init__(self) -> None:
        self.parser = tree_sitter.Parser(_LANGUAGE)


_PARSERS: Final = _ThreadParser()

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
    for _ in range(MAX_DROPPED_DASHES):
        try:
            return _walk(source, command)
        except DroppedDash as dropped:
            # tree-sitter skipped a lone `-` word (`cat - 2>&1` reads as `cat 2>&1`): read
            # it again as `'-'`, the same word to every shell, which the grammar keeps.
            at = dropped.offset
            source = source[:at] + b"'-'" + source[at + 1 :]
            command = source.decode("utf-8")
    return _walk(source, command)  # one dash too many: its DroppedDash is the refusal


def _walk(source: bytes, command: str) -> ParsedCommand:
    root = _PARSERS.parser.parse(_grammar_bytes(source)).root_node
    if root.has_error:  # an ERROR or a missing node anywhere in the tree
        raise ShellConstruct("does not parse")
    walker = _Walker(source, command if command.isascii() else None)
    walker.program(root)
    walker.finish()
    for simple in walker.commands:
        check_builtin(simple.argv)
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
