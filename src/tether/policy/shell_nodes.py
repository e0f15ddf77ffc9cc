"""Node-level rules for tree-sitter-bash's tree of an SSH command, for :mod:`tether.policy.shell`.

What :mod:`tether.policy.shell_walk` asks of single nodes and of the text between them: the
constructs denied by name (everything outside the allow-list of node types, "How a command is
read", point 2 of :mod:`tether.policy.shell`), the check that a word node holds only literal
parts, the check of the text between two read spans (point 4, coverage: blanks and line
continuations only, a blank between two words, a newline only before a command), and the check
of a command name (point 6: no assignment, no unquoted reserved word). Each raises
:class:`~tether.policy.errors.ShellConstruct`, whose detail names the construct.
"""

from __future__ import annotations

import re
from typing import Final

import tree_sitter

from tether.policy.errors import ShellConstruct
from tether.policy.shell_words import _RESERVED_WORD_BYTES

_Node = tree_sitter.Node

_LEAF_WORD_NODES: Final = frozenset({"word", "number", "raw_string"})
_STRING_PARTS: Final = frozenset({'"', "string_content"})
_ASSIGNMENT: Final = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*\+?=")
GAP: Final = re.compile(rb"(?:[ \t\n]|\\\n)*")
_CONTINUATION: Final = re.compile(rb"\\\n")

DENIED: Final = {
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


def denied(node: _Node) -> ShellConstruct:
    """The error for a node outside the allow-list, named after what it is."""
    if node.is_missing:
        return ShellConstruct(f"does not parse (missing {node.type!r})")
    detail = DENIED.get(node.type)
    if detail is None:
        detail = f"unsupported shell syntax ({node.type})"
    return ShellConstruct(detail)


def check_gap(gap: bytes, overlap: bool, *, blank: bool, newline: bool) -> None:
    """The text between two read spans: blanks and line continuations only.

    ``blank``: at least one space or tab is required (between two words). ``newline``: a
    newline (not a line continuation) is allowed (before the first word of a command).
    """
    if overlap or not GAP.fullmatch(gap):
        raise skipped()
    if not newline and has_bare_newline(gap):
        raise ShellConstruct("does not parse (newline inside a command)")
    if blank and b" " not in gap and b"\t" not in gap:
        raise ShellConstruct("line continuation inside a word")


def check_command_name(raw: bytes) -> None:
    """Deny a command name that sh would not read as a plain name (raw source bytes)."""
    if b"=" in raw and _ASSIGNMENT.match(raw):
        raise ShellConstruct("variable assignment")
    if raw in _RESERVED_WORD_BYTES:
        raise ShellConstruct(f"reserved word {raw.decode()!r} as a command")


def no_command() -> ShellConstruct:
    return ShellConstruct("redirection without a command")


def skipped() -> ShellConstruct:
    return ShellConstruct("does not parse (text the grammar skipped)")


class DroppedDash(ShellConstruct):
    """The grammar skipped a word that is a lone ``-`` (tree-sitter-bash drops the ``-`` of
    ``cat - 2>&1``): ``offset`` is its byte, for the parser to read it again quoted. Left
    unhandled it is the skipped-text refusal it derives from."""

    def __init__(self, offset: int) -> None:
        super().__init__(skipped().detail)
        self.offset = offset


_LONE_DASH: Final = re.compile(rb"[ \t]+(-)[ \t]+")


def dropped_dash(gap: bytes) -> int | None:
    """Where in ``gap`` a lone ``-`` word stands between blanks, or None."""
    match = _LONE_DASH.fullmatch(gap)
    return None if match is None else match.start(1)


def has_bare_newline(gap: bytes) -> bool:
    """A newline in ``gap`` that is not part of a line continuation."""
    return b"\n" in gap and b"\n" in _CONTINUATION.sub(b"", gap)


def check_word_tree(node: _Node) -> None:
    """A word node made only of literal parts (``string`` with nothing but its content)."""
    kind = node.type
    if kind in _LEAF_WORD_NODES:
        if node.child_count:
            raise denied(node.children[0])
    elif kind == "string":
        for child in node.children:
            if child.type not in _STRING_PARTS or child.child_count:
                raise denied(child)
    elif kind == "concatenation":
        for child in node.children:
            if child.type == "concatenation":
                raise denied(child)
            check_word_tree(child)
    else:
        raise denied(node)
