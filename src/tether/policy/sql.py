"""SQL queries for the PostgreSQL action (spec 5.3): parse, analyse, redact, cache.

:func:`analyze_sql` parses a query with PostgreSQL's own grammar (``pglast.parser.parse_sql_json``,
libpg_query) and returns one :class:`SqlStatement` per statement with the classes, relations and
functions the policy checks. What those mean, and every decision taken where the spec is silent,
is documented in :mod:`tether.policy.sql_analyze`.

Rejected with :class:`~tether.policy.errors.SqlParseError` (a deny, ``sql-parse-error``): text
PostgreSQL's grammar rejects; an empty query, or one of only comments and semicolons; a NUL
character (the C parser would stop there and check less than the server may be sent); text that
is not valid Unicode (a lone surrogate); more than :data:`MAX_QUERY_BYTES` bytes of UTF-8; nesting
too deep to walk (Python's recursion limit); a query that is not a ``str``.

``SqlStatement.text`` is the statement's exact source (``stmt_location``/``stmt_len``, trailing
blanks removed), literals included. ``SqlAnalysis.redacted`` is the whole query with every literal
token replaced by ``?`` (:mod:`tether.policy.sql_redact`). It is for audit only: no decision
reads it, so it is made on first access, off the decision path.

Caches (bounded LRU, :data:`CACHE_ENTRIES` entries and :data:`CACHE_BUDGET` characters of keys
and texts each; every read and write holds a lock; entries are immutable):

All serve only queries of at most :data:`CACHEABLE_CHARS` characters.

* exact: ``(query, default_schema)`` -> :class:`SqlAnalysis`.
* shape: ``(parse tree without constants and positions, default_schema)`` -> the statements'
  facts. The key is the parser's JSON with every ``A_Const`` body and every source position
  removed, so two queries share it exactly when PostgreSQL built the same tree for both except
  for constant values and positions, neither of which the analysis reads. Soundness therefore
  does not rest on any tokenisation; a few statements do read a constant (``SET search_path``)
  or might (any DDL, ``SET``, ``COPY``, ``GRANT``, ``EXPLAIN`` option values): an analysis with
  such a *literal-sensitive* statement is never stored. A hit costs one parse (which also
  rejects a grammar error caused by a value, ``float(0)``), one regular-expression pass over the
  JSON, and slicing the statement texts from the new query.

* normalized: ``(pglast.parser.normalize(query), default_schema)`` -> one statement's facts and
  its start offset. ``normalize`` is libpg_query's (pg_stat_statements') query normalisation: it
  parses the query (so a value that breaks the grammar still fails, and then the full path
  reports the parser's own error) and replaces the token of every constant with ``$n``, keeping
  all other text verbatim. It costs about a third of a JSON parse plus the shape key, and is
  what a query that only changes its literals pays. It is used only where its key is as exact
  as the shape key: queries without ``$`` (so every ``$n`` stands for a replaced constant, never
  a parameter or a dollar quote) and without ``;`` (one statement, whose text runs from its
  start offset to the end, trailing blanks removed), and only facts of one plain DML statement
  (``select``, ``insert``, ``update``, ``delete``, nothing literal-sensitive) are stored. Two such
  queries with the same key are the same text but for tokens that PostgreSQL's raw grammar made
  ``A_Const`` nodes in both, and no stored analysis reads a constant. Property tests substitute
  every kind of literal (strings, numbers, bit strings, typed and negative literals, names where
  a constant may stand) into DML templates and check the cached analysis against an uncached one.

``analyze_sql_uncached`` bypasses every cache; tests prove it returns what the caches return.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

from pglast import parser as pg_parser

from tether.policy.errors import SqlParseError
from tether.policy.lru import Lru as _Lru
from tether.policy.sql_analyze import (
    FORBIDDEN_FUNCTION_PREFIXES,
    FORBIDDEN_FUNCTIONS,
    STATEMENT_CLASSES,
    StatementFacts,
    analyze_statement,
    is_forbidden_function,
)
from tether.policy.sql_redact import redact
from tether.policy.sql_tables import stored_name

__all__ = [
    "CACHEABLE_CHARS",
    "CACHE_BUDGET",
    "CACHE_ENTRIES",
    "FORBIDDEN_FUNCTIONS",
    "FORBIDDEN_FUNCTION_PREFIXES",
    "MAX_QUERY_BYTES",
    "STATEMENT_CLASSES",
    "SqlAnalysis",
    "SqlStatement",
    "analyze_sql",
    "analyze_sql_uncached",
    "clear_sql_caches",
    "is_forbidden_function",
    "stored_name",
]

MAX_QUERY_BYTES: Final = 1 << 20
CACHE_ENTRIES: Final = 10_000
CACHE_BUDGET: Final = 32 << 20
CACHEABLE_CHARS: Final = 8192


@dataclass(frozen=True, slots=True)
class SqlStatement:
    """One statement of a query and everything the policy checks about it."""

    text: str
    classes: frozenset[str]
    relations: frozenset[str]
    functions: frozenset[str]
    forbidden_functions: frozenset[str]
    forbidden: str | None
    search_path: tuple[str, ...] | None  # () = reset to the server's default
    role: str | None = None  # SET ROLE / SESSION AUTHORIZATION: the role, "" = the login's


@dataclass(frozen=True, slots=True)
class SqlAnalysis:
    """Every statement of one query, and the query itself."""

    statements: tuple[SqlStatement, ...]
    query: str
    _redacted: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def redacted(self) -> str:
        """The query with every literal replaced by ``?``, for audit: made on first use, so that
        deciding does not pay for it."""
        value = self._redacted
        if value is None:
            value = redact(self.query)
            object.__setattr__(self, "_redacted", value)
        return value


def analyze_sql(query: str, default_schema: str = "public") -> SqlAnalysis:
    """Analyse every statement of ``query``; raises ``SqlParseError``. Cached (see module doc)."""
    query = _as_str(query)
    key = (query, default_schema)
    hit = _EXACT.get(key)
    if hit is not None:
        return hit
    _check(query)
    cacheable = len(query) <= CACHEABLE_CHARS
    normalized = _normalized(query) if cacheable else None
    analysis = None
    if normalized is not None:
        found = _NORMALIZED.get((normalized, default_schema))
        if found is not None:
            facts, location = found
            analysis = _assemble(query, (facts,), [(location, 0)])
    if analysis is None:
        analysis = _analyze(query, default_schema, shapes=cacheable, normalized=normalized)
    if cacheable:
        _EXACT.put(key, analysis, 3 * len(query))
    return analysis


def analyze_sql_uncached(query: str, default_schema: str = "public") -> SqlAnalysis:
    """:func:`analyze_sql` without any cache: same result, for tests and benchmarks."""
    query = _as_str(query)
    _check(query)
    return _analyze(query, default_schema, shapes=False, normalized=None)


def clear_sql_caches() -> None:
    _EXACT.clear()
    _SHAPES.clear()
    _NORMALIZED.clear()


# --- input checks ------------------------------------------------------------------------------


def _as_str(query: object) -> str:
    if type(query) is str:
        return query
    if isinstance(query, str):
        return str.__str__(query)  # an exact str: a subclass could hash or compare oddly
    raise SqlParseError("the query is not a string")


def _check(query: str) -> None:
    if "\x00" in query:
        raise SqlParseError("the query contains a NUL character")
    if len(query) > MAX_QUERY_BYTES:
        raise SqlParseError(f"the query is longer than {MAX_QUERY_BYTES} bytes")
    if not query.isascii():
        try:
            size = len(query.encode("utf-8"))
        except UnicodeEncodeError:
            raise SqlParseError("the query is not valid Unicode text") from None
        if size > MAX_QUERY_BYTES:
            raise SqlParseError(f"the query is longer than {MAX_QUERY_BYTES} bytes")


# --- analysis ----------------------------------------------------------------------------------


def _analyze(
    query: str, default_schema: str, *, shapes: bool, normalized: str | None
) -> SqlAnalysis:
    tree = _parse_json(query)
    key = (_tree_shape(tree), default_schema) if shapes else None
    facts = _SHAPES.get(key) if key is not None else None
    if facts is not None:
        positions = _json_positions(tree, len(facts))
    else:
        raw = _load(tree)
        try:
            facts = tuple(analyze_statement(item.get("stmt", {}), default_schema) for item in raw)
        except RecursionError:
            raise SqlParseError("the query is nested too deeply") from None
        positions = [(item.get("stmt_location", 0), item.get("stmt_len", 0)) for item in raw]
        if key is not None and not any(f.literal_sensitive for f in facts):
            _SHAPES.put(key, facts, len(key[0]))
    if normalized is not None and len(facts) == 1 and _normalizable(facts[0]):
        _NORMALIZED.put((normalized, default_schema), (facts[0], positions[0][0]), len(normalized))
    return _assemble(query, facts, positions)


def _normalized(query: str) -> str | None:
    """The normalized-text key of a query that may use it (see the module docstring), or None."""
    if "$" in query or ";" in query:
        return None
    try:
        return str(pg_parser.normalize(query))
    except pg_parser.ParseError:
        return None  # the full analysis raises the parser's own error


def _normalizable(facts: StatementFacts) -> bool:
    """Facts that the normalized-text cache may serve: plain DML, no literal-sensitive part."""
    return not facts.literal_sensitive and facts.classes <= _DML


def _parse_json(query: str) -> str:
    try:
        return str(pg_parser.parse_sql_json(query))
    except pg_parser.ParseError as exc:
        raise SqlParseError(str(exc)) from None


def _load(tree: str) -> list[dict[str, Any]]:
    try:
        stmts: list[dict[str, Any]] = json.loads(tree).get("stmts", [])
    except RecursionError:
        raise SqlParseError("the query is nested too deeply") from None
    if not stmts:
        raise SqlParseError("the query holds no statement")
    return stmts


def _assemble(
    query: str,
    facts: tuple[StatementFacts, ...],
    positions: list[tuple[int, int]],
) -> SqlAnalysis:
    texts = _texts(query, positions)
    if len(facts) == 1:  # the usual case, without a generator
        f = facts[0]
        statement = SqlStatement(
            texts[0],
            f.classes,
            f.relations,
            f.functions,
            f.forbidden_functions,
            f.forbidden,
            f.search_path,
            f.role,
        )
        return SqlAnalysis((statement,), query)
    return SqlAnalysis(
        tuple(
            SqlStatement(
                text,
                f.classes,
                f.relations,
                f.functions,
                f.forbidden_functions,
                f.forbidden,
                f.search_path,
                f.role,
            )
            for text, f in zip(texts, facts, strict=True)
        ),
        query,
    )


# The parser's JSON minus what the analysis never reads: constant values and source positions.
# A JSON string value cannot hold an unescaped quote, so the patterns only meet real keys.
# (Two passes: Python's regular expressions are fast only with a literal first character.)
_JSON_STRING: Final = r'"(?:[^"\\]++|\\.)*+"'
_CONSTANTS_AND_LOCATIONS: Final = re.compile(
    r'"(?:location":\d++|A_Const":\{(?:[^{}"]++|'
    + _JSON_STRING
    + r'|\{(?:[^{}"]++|'
    + _JSON_STRING
    + r")*+\})*+\})"
)
_OTHER_POSITIONS: Final = re.compile(r'"[a-z]++(?:_[a-z]++)*?_(?:location|len|start|end)":\d++')


def _tree_shape(tree: str) -> str:
    shape = _CONSTANTS_AND_LOCATIONS.sub("", tree)
    if '_len"' in shape or '_location"' in shape or '_start"' in shape or '_end"' in shape:
        shape = _OTHER_POSITIONS.sub("", shape)
    return shape


_STMT_POSITION: Final = re.compile(r'"stmt_(location|len)":(\d+)')
_PG_BLANKS: Final = " \t\n\r\f\v"


def _json_positions(tree: str, count: int) -> list[tuple[int, int]]:
    """Each statement's ``(stmt_location, stmt_len)`` read from the JSON text without loading it.

    Only ``RawStmt`` carries these keys in a raw parse tree; a zero is omitted. Every statement
    after the first has a location and every one before the last a length, so a location starts
    a new statement unless the current one is still empty, and so does a second length.
    """
    positions: list[list[int]] = [[0, 0, 0]]  # location, length, seen
    start = len(tree) - 64 if count == 1 else 0  # a lone RawStmt's keys end the text
    for match in _STMT_POSITION.finditer(tree, max(start, 0)):
        current = positions[-1]
        is_location = match.group(1) == "location"
        if current[2] and (is_location or current[1]):
            current = [0, 0, 0]
            positions.append(current)
        current[0 if is_location else 1] = int(match.group(2))
        current[2] = 1
    if len(positions) != count:  # cannot happen for a parse tree; stay exact anyway
        return [(i.get("stmt_location", 0), i.get("stmt_len", 0)) for i in _load(tree)]
    return [(location, length) for location, length, _ in positions]


def _texts(query: str, positions: list[tuple[int, int]]) -> list[str]:
    """Statement texts from byte positions (the parser counts UTF-8 bytes, Python characters)."""
    if query.isascii():
        return [
            query[start : start + length if length else None].rstrip(_PG_BLANKS)
            for start, length in positions
        ]
    encoded = query.encode("utf-8")
    return [
        encoded[start : start + length if length else None].decode("utf-8").rstrip(_PG_BLANKS)
        for start, length in positions
    ]


# --- caches ------------------------------------------------------------------------------------

_EXACT: Final[_Lru[tuple[str, str], SqlAnalysis]] = _Lru(CACHE_ENTRIES, CACHE_BUDGET)
_SHAPES: Final[_Lru[tuple[str, str], tuple[StatementFacts, ...]]] = _Lru(
    CACHE_ENTRIES, CACHE_BUDGET
)
_NORMALIZED: Final[_Lru[tuple[str, str], tuple[StatementFacts, int]]] = _Lru(
    CACHE_ENTRIES, CACHE_BUDGET
)
_DML: Final = frozenset({"select", "insert", "update", "delete"})
