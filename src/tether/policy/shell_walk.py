"""The walk over tree-sitter-bash's tree of an SSH command, for :mod:`tether.policy.shell`.

The allow-list of node types, the coverage check, the reading of redirections and command names
are documented in :mod:`tether.policy.shell` ("How a command is read", points 2 and 4 to 6).
The walk reads the structure (program, lists, pipelines, simple commands, redirections) in
source order; the checks of single nodes and of the text between them are in
:mod:`tether.policy.shell_nodes`.
"""

from __future__ import annotations

from typing import Final

import tree_sitter

from tether.policy.errors import ShellConstruct
from tether.policy.shell_nodes import (
    DENIED,
    GAP,
    DroppedDash,
    check_command_name,
    check_gap,
    check_word_tree,
    denied,
    dropped_dash,
    has_bare_newline,
    no_command,
    skipped,
)
from tether.policy.shell_words import _PLAIN_WORD, SimpleCommand, _decode_word

_Node = tree_sitter.Node

_WORD_NODES: Final = frozenset({"word", "number", "raw_string", "string", "concatenation"})
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
_FILE_REDIRECTS: Final = frozenset({">", ">>", "<"})
_DUP_REDIRECTS: Final = frozenset({">&", "<&"})
_DIGITS: Final = frozenset(b"0123456789")


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
        """Read ``source[start:end]``; the gap before it must be blanks (see ``check_gap``)."""
        position = self.position
        if start != position:
            gap = self.source[position:start]
            if gap != b" ":
                dash = None if start < position else dropped_dash(gap)
                if dash is not None:
                    raise DroppedDash(position + dash)
                check_gap(gap, start < position, blank=blank, newline=newline)
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
        if not GAP.fullmatch(self.source, self.position):
            raise skipped()

    # structure: program, list, pipeline

    def program(self, root: _Node) -> None:
        seen = separated = False
        for child in root.children:
            kind = child.type
            if kind in _STATEMENT_NODES:
                if seen:
                    gap = self.source[self.position : child.start_byte]
                    if not separated and not has_bare_newline(gap):
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
                raise denied(child)
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
                raise denied(node)
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
            raise denied(body) if body_kind in DENIED else no_command()

    def simple(self, command: _Node, redirected: _Node | None) -> None:
        """One simple command: a ``command`` node and the redirections hung on it, if any."""
        argv: list[str] = []
        redirects: list[str] = []
        self.first_item = True
        self.command(command, argv, redirects)
        if redirected is not None:
            self.redirections(redirected, argv, redirects)
        if not argv:
            raise no_command()
        self.commands.append(SimpleCommand(tuple(argv), tuple(redirects)))

    def reopen(self, redirected: _Node) -> None:
        """Give the redirections of a redirected list to the last command read."""
        last = self.commands.pop()
        argv, redirects = list(last.argv), list(last.redirects)
        self.redirections(redirected, argv, redirects)
        if not argv:  # a newline split the command before its redirections
            raise no_command()
        self.commands.append(SimpleCommand(tuple(argv), tuple(redirects)))

    def redirections(self, redirected: _Node, argv: list[str], redirects: list[str]) -> None:
        for child in redirected.children[1:]:
            if child.type != "file_redirect":
                raise denied(child)
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
                raise denied(child)

    def command_name(self, node: _Node, argv: list[str], redirects: list[str]) -> None:
        children = node.children
        if len(children) != 1 or children[0].type not in _WORD_NODES:
            raise denied(children[-1] if children else node)
        self.add_word(children[0], argv, redirects)

    def add_word(self, node: _Node, argv: list[str], redirects: list[str]) -> None:
        """Read one word node (its type already allowed) into ``argv``.

        A node that starts right where the previous word ended, without a blank, is the same
        shell word: tree-sitter splits ``'a'\\x`` in two (but not ``'a'\\'``). The node is then
        decoded as the rest of that word, as sh reads it (see ``_decode_word``).
        """
        if node.child_count:
            check_word_tree(node)
        start, end = node.start_byte, node.end_byte
        position = self.position
        if start == position and self.word_start >= 0 and not self.first_item:
            # The rest of the previous word: decoded on its own, after what that word
            # decoded to (once per node: decoding the whole span again was quadratic).
            self.position = end
            digits = self.digits_end == start
            argv[-1] += self.decode(start, end, before=argv[-1])
            start = self.word_start
            raw = self.source[start:end] if len(argv) == 1 else b""
            self.digits_end = end if digits and self.source[position:end].isdigit() else -1
        else:
            if start - position == 1 and self.source[position] == 0x20 and not self.first_item:
                self.position = end  # the common case: one space after the previous word
            else:
                self.split_at_newline(start, argv, redirects)
                self.item(start, end, blank=True)
            argv.append(self.decode(start, end))
            raw = self.source[start:end]
            self.digits_end = end if raw.isdigit() else -1
        self.word_start = start
        if len(argv) == 1:
            check_command_name(raw)

    def split_at_newline(self, start: int, argv: list[str], redirects: list[str]) -> None:
        """End the simple command if a newline comes before its next word or redirection.

        tree-sitter can run one command over a line break (``a | b | c<newline>d 2>&1`` holds
        the command ``c<newline>d``); to sh the newline ends ``c`` like a ``;``, so ``d`` starts
        a new command (and is checked as a command name).
        """
        position = self.position
        if self.first_item or start <= position:
            return
        if not has_bare_newline(self.source[position:start]):
            return
        if not argv:
            raise no_command()
        self.commands.append(SimpleCommand(tuple(argv), tuple(redirects)))
        self.operators.append(";")
        argv.clear()
        redirects.clear()
        self.first_item = True
        self.word_start = -1

    def decode(self, start: int, end: int, *, before: str | None = None) -> str:
        """The decoded shell word of ``source[start:end]`` (the rest of one, after ``before``:
        see ``_decode_word``)."""
        if self.text is not None:
            text = self.text[start:end]
            return text if _PLAIN_WORD.fullmatch(text) else _decode_word(text, before)
        try:
            return _decode_word(self.source[start:end].decode("utf-8"), before)
        except UnicodeDecodeError:
            raise ShellConstruct("does not parse (a word boundary inside a character)") from None

    # redirections

    def redirect(self, node: _Node, argv: list[str], redirects: list[str]) -> None:
        """One ``file_redirect``: the redirection, then any words tree-sitter hung on it."""
        children = node.children
        first = children[0]
        has_fd = first.type == "file_descriptor"
        if len(children) < 2 + has_fd:
            raise denied(children[-1])
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
                raise denied(child)
            self.add_word(child, argv, redirects)

    def descriptor(self, descriptor: _Node, operator: _Node) -> str:
        start, end = descriptor.start_byte, descriptor.end_byte
        raw = self.source[start:end]
        if end - start != 1 or raw[0] not in _DIGITS or end != operator.start_byte:
            raise ShellConstruct(f"redirection of descriptor {raw.decode(errors='replace')!r}")
        return raw.decode()

    def redirect_target(self, kind: str, operator: _Node, target: _Node) -> str:
        if target.type not in _WORD_NODES:
            raise denied(target)
        if kind in _DUP_REDIRECTS:
            start, end = target.start_byte, target.end_byte
            raw = self.source[start:end]
            if end - start != 1 or raw[0] not in _DIGITS:
                raise ShellConstruct(f"redirection {kind} to something other than a descriptor")
            self.advance(start, end, blank=False, newline=False)
            return raw.decode()
        if kind not in _FILE_REDIRECTS:
            raise denied(operator) if kind in DENIED else ShellConstruct(f"redirection {kind}")
        if target.child_count:
            check_word_tree(target)
        start, end = target.start_byte, target.end_byte
        self.advance(start, end, blank=False, newline=False)
        path = self.decode(start, end)
        if path != "/dev/null":
            raise ShellConstruct(f"redirection {kind} to a file other than /dev/null")
        return path


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
