"""Redaction of SQL text for audit: every literal token replaced by ``?``.

Literal tokens are strings, numbers, bit strings and dollar-quoted bodies; comments,
identifiers and ``$n`` parameters stay. They are found by a small lexer that accepts only a
plain subset of PostgreSQL's token grammar (ASCII outside quotes, standard strings, decimal
numbers, ``--`` and non-nested ``/* */`` comments) and by PostgreSQL's own scanner
(``pglast.parser.scan``) for anything else; property tests prove the two agree on the
subset. Security decisions: at the first token outside the subset (``E''``, ``U&''``,
``$$``, a nested comment, a string continued over a newline...) the lexer gives up and the
real scanner decides; text the scanner cannot scan is hidden whole. The value of a custom
setting (``SET app.token = sk_abc``: a name with a dot) is hidden too when written as a name:
PostgreSQL reads it as a string constant. No decision reads the redacted text.
"""

from __future__ import annotations

import json
import re
from typing import Final

from pglast import parser as pg_parser

__all__ = ["redact"]

_MAY_HOLD_LITERALS: Final = re.compile(r"['$0-9]").search
_LITERAL_TOKENS: Final = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})

# Literal tokens of a plain subset of PostgreSQL's token grammar. Each match skips plain text
# (names, keywords, blanks, operators: never a literal) and ends on one token that may hold a
# quote or a digit; a token outside the subset matches ``bail`` and the real scanner is used.
_LEXER: Final = re.compile(
    r"""
    (?:
        [ \t\n\r\f\v(),;:+*<>=!~@#%^&|`?\[\]]++
      | (?![bBxXeEuU]['&])[A-Za-z_][A-Za-z0-9_$]*+              # a name, not b'' x'' e'' u&''
      | -(?!-) | /(?!\*) | \.\. | \.(?![0-9])                       # .. is one token
    )*+
    (?:
        (?P<skip>
            "(?:[^"]|"")*+"                                     # quoted identifier
          | --[^\n\r]*+                                         # comment to the end of the line
          | /\*(?:[^*/]|\*(?!/)|/(?!\*))*+\*/                   # comment, not nested
          | \$[0-9]++(?![A-Za-z0-9_$])                          # parameter $n
        )
      | (?P<string>[bBxX]'[^']*+'|'(?:[^']|'')*+')              # bit string, standard string
      | (?P<number>
            (?:[0-9][0-9_]*+(?:\.[0-9_]*+)?|\.[0-9][0-9_]*+)(?:[eE][+-]?[0-9][0-9_]*+)?
            (?![A-Za-z0-9_$.])
        )
      | (?P<end>\Z)
      | (?P<bail>[\s\S])                # E'', U&'', $$, nested comment, non-ASCII name, 1e, ...
    )
    """,
    re.VERBOSE,
)
# A string followed by blanks and comments holding a newline, then a quote, continues.
_CONTINUATION: Final = re.compile(r"(?:[ \t\n\r\f\v]++|--[^\n\r]*+)*+'")


def redact(query: str) -> str:
    """``query`` with every literal token replaced by ``?`` (see the module docstring)."""
    values = _setting_values(query) if _MAY_SET(query) is not None else []
    if _MAY_HOLD_LITERALS(query) is None and not values:
        return query
    spans = _lexed_literals(query) if _MAY_HOLD_LITERALS(query) is not None else []
    if spans is None:
        spans = _scanned_literals(query)
    if values:
        spans = sorted({*spans, *values})
    parts = []
    position = 0
    for start, end in spans:
        parts.append(query[position:start])
        position = end
    parts.append(query[position:])
    return "?".join(parts)


def _lexed_literals(query: str) -> list[tuple[int, int]] | None:
    spans: list[tuple[int, int]] = []
    for match in _LEXER.finditer(query):
        kind = match.lastgroup
        if kind == "end":
            return spans
        if kind is None or kind == "bail":
            return None
        if kind != "skip":
            span = match.span(kind)
            if kind == "string" and _continues(query, span[1]):
                return None
            spans.append(span)
    return spans


def _continues(query: str, end: int) -> bool:
    following = _CONTINUATION.match(query, end)
    return following is not None and ("\n" in following[0] or "\r" in following[0])


_MAY_SET: Final = re.compile(r"\bset\b", re.IGNORECASE).search  # the keyword SET


def _setting_values(query: str) -> list[tuple[int, int]]:
    """The value of a custom setting (``SET app.token = sk_abc``, a name with a dot, the
    application's own data) written as a name, not a literal: the grammar makes it a
    constant all the same, and the application may keep a token or a tenant there. Found
    in the parse tree; nothing for text that does not parse."""
    try:
        tree = json.loads(pg_parser.parse_sql_json(query))
    except (pg_parser.ParseError, ValueError, RecursionError):
        return []
    starts = {_char_offset(query, byte) for byte in _custom_setting_values(tree)}
    if not starts:
        return []
    return [
        (t.start, t.end + 1)
        for t in pg_parser.scan(query)
        if t.start in starts and (t.name == "IDENT" or t.kind != "NO_KEYWORD")
    ]


def _custom_setting_values(node: object) -> list[int]:
    """Byte offsets of the constants set to a custom setting, anywhere in ``node``."""
    found: list[int] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            # A VariableSetStmt's body, wrapped or bare (ALTER ROLE ... SET holds it bare).
            kind, name = str(item.get("kind", "")), str(item.get("name", ""))
            if kind.startswith("VAR_SET") and "." in name:
                for arg in item.get("args", []):
                    location = arg.get("A_Const", {}).get("location")
                    if isinstance(location, int):
                        found.append(location)
            stack.extend(item.values())
    return found


def _char_offset(query: str, byte: int) -> int:
    """The character offset of a byte offset of ``query``'s UTF-8 (the parser counts bytes)."""
    if query.isascii():
        return byte
    return len(query.encode("utf-8")[:byte].decode("utf-8", "ignore"))


def _scanned_literals(query: str) -> list[tuple[int, int]]:
    """Literal tokens by PostgreSQL's scanner; all of the text if it cannot be scanned."""
    try:
        tokens = pg_parser.scan(query)
    except pg_parser.ParseError:
        return [(0, len(query))]  # cannot happen for text that parsed; hide everything
    return [(t.start, t.end + 1) for t in tokens if t.name in _LITERAL_TOKENS]
