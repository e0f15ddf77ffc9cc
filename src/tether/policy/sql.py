"""SQL queries for the PostgreSQL action (spec 5.3): parse, analyse, redact, cache.

:func:`analyze_sql` parses a query with PostgreSQL's own grammar (``pglast.parser.parse_sql_json``,
libpg_query) and returns one :class:`SqlStatement` per statement, with the classes, relations and
functions the policy checks (what they mean, and every decision taken where the spec is silent,
is documented in :mod:`tether.policy.sql_analyze`).

Rejected with :class:`~tether.policy.errors.SqlParseError` (a deny, ``sql-parse-error``): text
PostgreSQL's grammar rejects; an empty query or one of only comments and semicolons; a NUL
character (the C parser would stop at it and check less than the server may run); text that is
not valid Unicode (a lone surrogate); more than :data:`MAX_QUERY_BYTES` bytes of UTF-8; nesting so
deep that the tree cannot be walked (Python's recursion limit); a query that is not a ``str``.

``redacted`` is the query with every literal token (string, number, bit string, dollar-quoted
body) replaced by ``?``, found with PostgreSQL's own scanner (``pglast.parser.scan``); comments,
identifiers and ``$n`` parameters stay. A statement's ``text`` is its exact source (from
``stmt_location``/``stmt_len``, trailing blanks removed), literals included.

Caches (both bounded LRU, :data:`CACHE_ENTRIES` entries each, only for queries of at most
:data:`CACHEABLE_CHARS` characters, thread-safe: every read and write holds a lock, and entries
are immutable and keyed by the full query text and default schema, so a hit can never be
another query's result):

* exact: ``(query, default_schema)`` -> :class:`SqlAnalysis`.
* shape: ``(query with its literal tokens replaced by a kind marker, default_schema)`` -> a
  template. Two queries with one shape differ only in the values of literal tokens of the same
  kinds, so PostgreSQL's grammar builds the same tree for both except for those values. A hit is
  still parsed (``parse_sql_json`` only, no tree walk) because a few grammar actions reject some
  literal values (``float(0)``), and the statement texts are re-sliced from the new query through
  token indices; ``redacted`` depends on the shape only. Sound only for analyses that read no
  literal value: an analysis with a literal-sensitive statement (any DDL, SET, COPY, GRANT, an
  EXPLAIN option with a value...) is never stored as a template. One literal is not a value: the
  string after ``UESCAPE`` changes how a ``U&"..."`` identifier decodes, so it is kept verbatim
  in the shape. A query without a quote, a ``$`` or a digit has no literal token and skips the
  scanner. ``analyze_sql_uncached`` bypasses both caches (tests prove the two agree).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from threading import Lock
from typing import Any, Final, Generic, Protocol, TypeVar

from pglast import parser as pg_parser

from tether.policy.errors import SqlParseError
from tether.policy.sql_analyze import (
    FORBIDDEN_FUNCTION_PREFIXES,
    FORBIDDEN_FUNCTIONS,
    STATEMENT_CLASSES,
    analyze_statement,
    is_forbidden_function,
)

__all__ = [
    "CACHEABLE_CHARS",
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
]

MAX_QUERY_BYTES: Final = 1 << 20
CACHE_ENTRIES: Final = 10_000
CACHEABLE_CHARS: Final = 4096


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


@dataclass(frozen=True, slots=True)
class SqlAnalysis:
    statements: tuple[SqlStatement, ...]
    redacted: str


def analyze_sql(query: str, default_schema: str = "public") -> SqlAnalysis:
    """Analyse every statement of ``query``; raises ``SqlParseError``. Cached (see module doc)."""
    query = _as_str(query)
    key = (query, default_schema)
    hit = _EXACT.get(key)
    if hit is not None:
        return hit
    _check(query)
    analysis = _analyze_shaped(query, default_schema)
    if len(query) <= CACHEABLE_CHARS:
        _EXACT.put(key, analysis)
    return analysis


def analyze_sql_uncached(query: str, default_schema: str = "public") -> SqlAnalysis:
    """:func:`analyze_sql` without any cache (same result, for tests and benchmarks)."""
    query = _as_str(query)
    _check(query)
    return _analyze_fresh(query, default_schema, None)[0]


def clear_sql_caches() -> None:
    _EXACT.clear()
    _SHAPES.clear()


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


class _Token(Protocol):
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...  # inclusive
    @property
    def name(self) -> str: ...


_LITERAL_TOKENS: Final = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_MAY_HOLD_LITERALS: Final = re.compile(r"['$0-9]").search
_PG_BLANKS: Final = " \t\n\r\f\v"


@dataclass(frozen=True, slots=True)
class _Shape:
    key: str  # the query with each literal token replaced by NUL + its kind's letter
    redacted: str


@dataclass(frozen=True, slots=True)
class _Template:
    """An analysis that reads no literal: statements and the token range of each one's text."""

    statements: tuple[tuple[SqlStatement, int, int], ...]
    redacted: str

    def instantiate(self, query: str, tokens: Sequence[_Token]) -> SqlAnalysis:
        return SqlAnalysis(
            tuple(
                SqlStatement(
                    query[tokens[first].start : tokens[last].end + 1],
                    s.classes,
                    s.relations,
                    s.functions,
                    s.forbidden_functions,
                    s.forbidden,
                    s.search_path,
                )
                for s, first, last in self.statements
            ),
            self.redacted,
        )


def _analyze_shaped(query: str, default_schema: str) -> SqlAnalysis:
    """Serve from the shape cache when the query's literal-free shape was seen before."""
    if _MAY_HOLD_LITERALS(query) is None:
        return _analyze_fresh(query, default_schema, None)[0]
    try:
        tokens = pg_parser.scan(query)
    except pg_parser.ParseError:
        return _analyze_fresh(query, default_schema, None)[0]  # raises the parser's error
    shape = _shape(query, tokens)
    key = (shape.key, default_schema)
    template = _SHAPES.get(key)
    if template is not None:
        _parse_json(query)  # the grammar may still reject this literal's value
        return template.instantiate(query, tokens)
    analysis, template = _analyze_fresh(query, default_schema, tokens)
    if template is not None and len(query) <= CACHEABLE_CHARS:
        _SHAPES.put(key, template)
    return analysis


def _analyze_fresh(
    query: str, default_schema: str, tokens: Sequence[_Token] | None
) -> tuple[SqlAnalysis, _Template | None]:
    raw = _parse(query)
    spans = _spans(query, raw)
    statements: list[SqlStatement] = []
    sensitive = False
    for item, (start, end) in zip(raw, spans, strict=True):
        try:
            facts = analyze_statement(item.get("stmt", {}), default_schema)
        except RecursionError:
            raise SqlParseError("the query is nested too deeply") from None
        sensitive = sensitive or facts.literal_sensitive
        statements.append(
            SqlStatement(
                query[start:end],
                facts.classes,
                facts.relations,
                facts.functions,
                facts.forbidden_functions,
                facts.forbidden,
                facts.search_path,
            )
        )
    if tokens is None and _MAY_HOLD_LITERALS(query) is not None:
        tokens = _scan(query)
    if tokens is None:
        return SqlAnalysis(tuple(statements), query), None
    shape = _shape(query, tokens)
    analysis = SqlAnalysis(tuple(statements), shape.redacted)
    template = None if sensitive else _template(statements, spans, tokens, shape.redacted)
    return analysis, template


def _parse_json(query: str) -> str:
    try:
        return str(pg_parser.parse_sql_json(query))
    except pg_parser.ParseError as exc:
        raise SqlParseError(str(exc)) from None


def _parse(query: str) -> list[dict[str, Any]]:
    try:
        stmts: list[dict[str, Any]] = json.loads(_parse_json(query)).get("stmts", [])
    except RecursionError:
        raise SqlParseError("the query is nested too deeply") from None
    if not stmts:
        raise SqlParseError("the query holds no statement")
    return stmts


def _scan(query: str) -> Sequence[_Token]:
    try:
        tokens: Sequence[_Token] = pg_parser.scan(query)
    except pg_parser.ParseError as exc:
        raise SqlParseError(str(exc)) from None
    return tokens


def _spans(query: str, raw: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Each statement's source as character offsets (the parser counts UTF-8 bytes)."""
    encoded = None if query.isascii() else query.encode("utf-8")
    spans = []
    for item in raw:
        start = item.get("stmt_location", 0)
        length = item.get("stmt_len", 0)
        end = start + length if length else None
        if encoded is not None:
            start = len(encoded[:start].decode("utf-8"))
            end = None if end is None else len(encoded[:end].decode("utf-8"))
        text = query[start:end].rstrip(_PG_BLANKS)
        spans.append((start, start + len(text)))
    return spans


def _shape(query: str, tokens: Sequence[_Token]) -> _Shape:
    parts: list[str] = []
    kinds: list[str] = []
    pos = 0
    after_uescape = False
    for token in tokens:
        name = token.name
        if name in _LITERAL_TOKENS and not after_uescape:
            parts.append(query[pos : token.start])
            kinds.append(name[0])
            pos = token.end + 1
        after_uescape = name == "UESCAPE"
    parts.append(query[pos:])
    return _Shape("\x00".join(parts) + "\x00" + "".join(kinds), "?".join(parts))


def _template(
    statements: list[SqlStatement],
    spans: list[tuple[int, int]],
    tokens: Sequence[_Token],
    redacted: str,
) -> _Template | None:
    """Map each statement's span to token indices; ``None`` if a span does not fall on tokens."""
    first_at = {token.start: index for index, token in enumerate(tokens)}
    last_at = {token.end + 1: index for index, token in enumerate(tokens)}
    entries = []
    for statement, (start, end) in zip(statements, spans, strict=True):
        first = first_at.get(start)
        last = last_at.get(end)
        if first is None or last is None:
            return None
        entries.append((statement, first, last))
    return _Template(tuple(entries), redacted)


# --- caches ------------------------------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """A bounded least-recently-used map; every operation holds the lock."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if len(self._data) > self._size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_EXACT: Final[_Lru[tuple[str, str], SqlAnalysis]] = _Lru(CACHE_ENTRIES)
_SHAPES: Final[_Lru[tuple[str, str], _Template]] = _Lru(CACHE_ENTRIES)
