"""Property tests of the SQL analyzer: no crash, no lost deny, caches exact, redaction exact."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser as pg_parser

from tether.policy import sql_redact
from tether.policy.errors import SqlParseError
from tether.policy.sql import STATEMENT_CLASSES, SqlAnalysis, analyze_sql, analyze_sql_uncached

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- building blocks -------------------------------------------------------------------------

FRAGMENTS = [
    "SELECT", "select", "FROM", "WHERE", "WITH", "RECURSIVE", "AS", "DELETE", "INSERT", "INTO",
    "UPDATE", "SET", "VALUES", "COPY", "TO", "STDOUT", "PROGRAM", "DO", "EXECUTE", "PREPARE",
    "EXPLAIN", "ANALYZE", "CREATE", "TABLE", "FUNCTION", "LANGUAGE", "sql", "RETURNING", "FOR",
    "UNION", "ALL", "JOIN", "ON", "LATERAL", "ROLE", "search_path", "CALL", "BEGIN", "END",
    "t", "s.t", "pg_shadow", "x", "u1", "a$b", "\"Q\"", "\"a\"\"b\"", "U&\"\\0061\"", "UESCAPE",
    "pg_read_file", "dblink", "(", ")", ",", ";", ".", "*", "=", "::", "-", "+", "/", "||", "[",
    "]", "$1", "$$", "$q$", "'", "''", "'a'", "'it''s'", "E'\\''", "e'x'", "B'101'", "x'ff'",
    "n'z'", "U&'x'", "1", "42", "-7", "1.5", ".5", "5.", "1e3", "1e", "0x1F", "1_000", "1__0",
    "--", "-- c\n", "/*", "*/", "/* c */", "/* /* n */ */", "\n", "\t", "é", "\\", "{", "}",
]  # fmt: skip


# Tokens of the lexer's plain subset, and near misses, for comparing it with the scanner.
PLAIN_FRAGMENTS = [
    "SELECT", "b1", "x2", "e3", "u4", "n", "date", "a$b", "t1", "_1", '"Q"', '"a""b"', '""',
    "1", "42", "1.5", ".5", "5.", "1e3", "1E-2", "1_000", "0", "'a'", "'it''s'", "''", "'x\\y'",
    "'--'", "'/*'", "'\"'", "'é'", "B'101'", "x'ff'", "X''", "$1", "$12", "-- c\n", "/* c */",
    "/* 'x' */", "/**/", "+", "-", "*", "/", "||", "::", "=", "<>", ".", "(", ")", "[", "]", ";",
    ",", "&", "%", "^", "@", "#", "~", "!", "?", "|", "`", ":", " ", "\n", "\t", "\r",
]  # fmt: skip


def soup(separators: str = " \n", fragments: list[str] = FRAGMENTS) -> st.SearchStrategy[str]:
    pieces = st.lists(
        st.tuples(st.sampled_from(fragments), st.sampled_from(["", *separators])), max_size=25
    )
    return pieces.map(lambda items: "".join(a + b for a, b in items))


def well_formed(analysis: SqlAnalysis) -> None:
    assert analysis.statements
    for statement in analysis.statements:
        assert statement.classes
        assert statement.classes <= STATEMENT_CLASSES
        assert statement.forbidden_functions <= statement.functions
        assert statement.text


# --- never crashes ---------------------------------------------------------------------------


@PROPS
@given(st.one_of(st.text(max_size=200), soup(), soup("")))
def test_any_text_analyses_or_raises_sql_parse_error(query: str) -> None:
    try:
        cached = analyze_sql(query)
    except SqlParseError as exc:
        assert exc.reason == "sql-parse-error"
        assert exc.detail
        return
    well_formed(cached)
    fresh = analyze_sql_uncached(query)
    assert cached == fresh
    assert cached.redacted == fresh.redacted


# --- a deny never becomes an allow -----------------------------------------------------------

FORBIDDEN_CALLS = [
    "pg_read_file('x')",
    "pg_catalog.pg_read_file('/etc/passwd')",
    "PG_READ_BINARY_FILE('x')",
    "\"pg_ls_dir\"('.')",
    "dblink_exec('host=h', 'DROP TABLE t')",
    "ext.dblink('h', 'SELECT 1')",
    "lo_import('/etc/passwd')",
    "set_config('search_path', 'evil', false)",
    "query_to_xml('SELECT * FROM secret', true, true, '')",
    "pg_terminate_backend(1)",
]
EXPRESSION_WRAPPERS = [
    "({})",
    "coalesce({}, 'a')",
    "lower({}::text)",
    "{}::text",
    "CASE WHEN true THEN {} END",
    "CASE {} WHEN 'a' THEN 1 END",
    "(SELECT {})",
    "(SELECT {} FROM t LIMIT 1)",
    "ARRAY[{}]",
    "ROW({}, 1)",
    "{} || 'x'",
    "NOT ({} IS NULL)",
    "EXISTS (SELECT {})",
    "(SELECT max(v) FROM (VALUES ({})) w(v))",
    "f(a => {})",
    "JSON_OBJECT('k': {})",
    "{} IN (SELECT 'a')",
    "'a' = ANY(ARRAY[{}])",
    "(WITH c AS (SELECT {} AS v) SELECT v FROM c)",
    "(SELECT v FROM t, LATERAL (SELECT {} AS v) l)",
    "count(*) FILTER (WHERE {} IS NULL)",
    "sum(1) OVER (ORDER BY {})",
]
STATEMENT_TEMPLATES = [
    "SELECT {}",
    "SELECT a FROM t WHERE {} IS NOT NULL",
    "SELECT * FROM t ORDER BY {}",
    "SELECT a FROM t GROUP BY a HAVING {} IS NULL",
    "SELECT * FROM t JOIN u ON {} = u.a",
    "SELECT * FROM t LIMIT length({})",
    "VALUES ({})",
    "INSERT INTO t VALUES ({})",
    "INSERT INTO t SELECT {}",
    "INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = {}",
    "UPDATE t SET a = {}",
    "UPDATE t SET a = 1 WHERE {} = 'x'",
    "DELETE FROM t WHERE {} = 'x'",
    "DELETE FROM t RETURNING {}",
    "WITH c AS (SELECT {}) SELECT * FROM c",
    "WITH c AS (DELETE FROM t WHERE {} = 'a' RETURNING *) SELECT 1",
    "SELECT * FROM (SELECT {}) s",
    "COPY (SELECT {}) TO STDOUT",
    "EXPLAIN SELECT {}",
    "EXPLAIN ANALYZE SELECT {}",
    "PREPARE p AS SELECT {}",
    "DECLARE c CURSOR FOR SELECT {}",
    "CREATE VIEW v AS SELECT {}",
    "CREATE TABLE n AS SELECT {}",
    "CREATE TABLE n (a text DEFAULT ({}))",
    "CREATE INDEX ON t (({}))",
    "ALTER TABLE t ADD CHECK ({} IS NOT NULL)",
    "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED AND {} IS NULL THEN DELETE",
    "CALL p({})",
    "CREATE FUNCTION g() RETURNS int LANGUAGE sql RETURN length({})",
    "CREATE RULE r AS ON INSERT TO t DO ALSO SELECT {}",
]
HARMLESS = ["", "SELECT 1; ", "BEGIN; ", "SET work_mem = '1MB'; "]


@st.composite
def nested(draw: st.DrawFn, payloads: list[str]) -> str:
    expression = draw(st.sampled_from(payloads))
    for wrapper in draw(st.lists(st.sampled_from(EXPRESSION_WRAPPERS), max_size=4)):
        expression = wrapper.format(expression)
    return expression


@st.composite
def embedded(draw: st.DrawFn, payloads: list[str]) -> str:
    statement = draw(st.sampled_from(STATEMENT_TEMPLATES)).format(draw(nested(payloads)))
    return draw(st.sampled_from(HARMLESS)) + statement + draw(st.sampled_from(["", "; COMMIT"]))


@PROPS
@given(embedded(FORBIDDEN_CALLS))
def test_a_forbidden_call_anywhere_is_reported(query: str) -> None:
    analysis = analyze_sql(query)
    well_formed(analysis)
    assert any(s.forbidden_functions for s in analysis.statements), query


@PROPS
@given(embedded(["(SELECT max(v) FROM secret.vault)", "(SELECT v FROM secret.vault LIMIT 1)"]))
def test_a_relation_anywhere_is_reported(query: str) -> None:
    analysis = analyze_sql(query)
    assert any("secret.vault" in s.relations for s in analysis.statements), query


DML_TEMPLATES = [
    t for t in STATEMENT_TEMPLATES if t.startswith(("SELECT", "INSERT", "UPDATE", "DELETE"))
]


@PROPS
@given(st.sampled_from(DML_TEMPLATES), nested(["1", "a", "'x'"]))
def test_a_data_modifying_cte_adds_its_class(template: str, expression: str) -> None:
    query = "WITH zz AS (DELETE FROM secret.vault RETURNING *) " + template.format(expression)
    (statement,) = analyze_sql(query).statements
    assert "delete" in statement.classes
    assert "secret.vault" in statement.relations


# --- caches are exact ------------------------------------------------------------------------

LITERAL_TEMPLATES = [
    "SELECT id, total FROM billing.invoices WHERE customer_id = {} AND status = {}",
    "select * from t where a in ({}, {}) or b = any(array[{}]);",
    "INSERT INTO t (a, b) VALUES ({}, {}) ON CONFLICT DO NOTHING",
    "UPDATE t SET a = {} WHERE b = {} RETURNING *",
    "DELETE FROM t WHERE a = {};\n  SELECT {} -- tail",
    "SELECT 1::float({})",
    'SELECT {}::numeric(10, 2), {} AS "é"',
    "SET search_path TO {}",
    "SET work_mem = {}",
    "EXPLAIN (ANALYZE {}) DELETE FROM t",
    "COPY t TO {}",
    "COPY (SELECT {}) TO STDOUT",
    'SELECT * FROM U&"!0070g_class" UESCAPE {}',
    "WITH x AS (SELECT {} AS v) SELECT * FROM x WHERE v = {}",
    "PREPARE p AS SELECT * FROM t WHERE a = {}",
    "NOTIFY ch, {}",
    "CREATE ROLE r PASSWORD {}",
    "SELECT interval {}, date {}",
    "DO {}",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS {}",
    "SELECT * FROM t WHERE a = {} FOR UPDATE",
    "  /* c */ SELECT {} ;; SELECT {}",
    # One statement, no ';': the normalized-text cache serves these.
    "SELECT a FROM t WHERE b = {} LIMIT {} OFFSET {}",
    "  -- lead\n SELECT a, {} FROM t AS x WHERE x.b IN ({}, {}) /* tail */ ",
    "SELECT * FROM t WHERE a = {} FETCH FIRST {} ROWS ONLY",
    "SELECT f({}), {}::text, CAST({} AS varchar(10)) FROM s.t",
    "INSERT INTO s.t VALUES ({}, {})",
    "SELECT * FROM t WHERE a = {} AND b = 'é' AND c = {}",
    "SELECT {} {} FROM t",
    "SELECT * FROM t WHERE a = {}{}",
    "SELECT - {}, -{}, +{} FROM t",
    "SELECT * FROM t WHERE a = {} OR pg_read_file({}) IS NULL",
    "SELECT * FROM {}",
    "SELECT * FROM t WHERE a = {} UNION SELECT * FROM u WHERE b = {}",
    "WITH d AS (DELETE FROM t WHERE a = {} RETURNING *) SELECT * FROM d",
    "SELECT set_config({}, {}, false)",
    "SELECT {}::regclass",
    "SELECT nextval({}), currval({}) FROM t",
    "SELECT * FROM t WHERE a = {} AND b = {}::regclass::oid",
]


def quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


LITERALS = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.integers(min_value=0, max_value=60).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["0", "1", "1_000", ".5", "5.", "1e3", "-0", "true", "off", "NULL", "''"]),
    st.text(max_size=12).map(quoted),
    st.sampled_from(["a", "b", "public", '"Mixed"', "'/etc/passwd'", "'!'", "'#'", "STDOUT"]),
    st.text(alphabet="abc'\\\n", max_size=8).map(
        lambda t: "E'" + t.replace("\\", "\\\\").replace("'", "\\'") + "'"
    ),
    st.text(alphabet="ab$ 1;'", max_size=8).map(lambda t: "$x$" + t + "$x$"),
    st.text(alphabet="01", max_size=8).map(lambda t: "B'" + t + "'"),
    st.sampled_from(
        ["'SELECT 1'", "'SELECT pg_read_file(''x'')'", "'DELETE FROM t'", "$$ BEGIN END $$"]
    ),
    st.sampled_from(["1) OR pg_read_file('x') IS NULL OR (1", "(SELECT secret FROM vault)"]),
)


@st.composite
def literal_queries(draw: st.DrawFn) -> list[str]:
    template = draw(st.sampled_from(LITERAL_TEMPLATES))
    holes = template.count("{}")
    fills = draw(
        st.lists(st.lists(LITERALS, min_size=holes, max_size=holes), min_size=2, max_size=5)
    )
    return [template.format(*fill) for fill in fills]


def outcome(analyze: object, query: str) -> tuple[SqlAnalysis, str] | str:
    assert callable(analyze)
    try:
        result = analyze(query)
    except SqlParseError as exc:
        return f"error: {exc.detail}"
    assert isinstance(result, SqlAnalysis)
    return result, result.redacted


@PROPS
@given(literal_queries())
def test_cached_analysis_equals_a_fresh_one(queries: list[str]) -> None:
    for query in queries:
        assert outcome(analyze_sql, query) == outcome(analyze_sql_uncached, query), query


# --- redaction: the small lexer agrees with PostgreSQL's scanner -----------------------------


LEXER_INPUTS = st.one_of(
    soup("", PLAIN_FRAGMENTS),
    soup(" ", PLAIN_FRAGMENTS),
    soup(),
    st.text(alphabet="\"'$-/*.0123456789eEbBxXnNuU&_a \n\r\t;:+", max_size=30),
    st.text(max_size=40),
)


@PROPS
@given(LEXER_INPUTS)
def test_lexer_finds_exactly_the_scanners_literals(query: str) -> None:
    lexed = sql_redact._lexed_literals(query)
    if lexed is None:
        return  # outside the subset: the scanner is used
    try:
        pg_parser.scan(query)
    except (pg_parser.ParseError, UnicodeEncodeError):
        return  # not SQL text: never redacted (the parse rejects it first)
    assert lexed == sql_redact._scanned_literals(query), query


def test_lexer_accepts_ordinary_queries() -> None:
    queries = [
        "SELECT id, total FROM billing.invoices WHERE customer_id = 42 AND status = 'open'",
        "select a1, \"b2\", $1, t.x FROM s.t2 WHERE c = 'it''s' AND d > 1.5e3 -- note 'x'\n",
        "/* hint */ UPDATE t SET v = B'101', w = x'FF', z = n'a', d = date'2024-01-01'",
        "SELECT 'ünïcode' FROM t WHERE a = .5 OR b = 5. OR c = 1_000",
    ]
    for query in queries:
        lexed = sql_redact._lexed_literals(query)
        assert lexed is not None, query
        assert lexed == sql_redact._scanned_literals(query)


@PROPS
@given(
    st.text(
        alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
        min_size=1,
        max_size=20,
    )
)
def test_redacted_text_never_holds_a_string_literal(secret: str) -> None:
    marker = "Zq" + secret + "qZ"
    query = f"SELECT * FROM t WHERE a = {quoted(marker)} AND b = 1"
    analysis = analyze_sql(query)
    assert marker not in analysis.redacted
    assert analysis.redacted == "SELECT * FROM t WHERE a = ? AND b = ?"


def test_scanner_literal_kinds_are_the_ones_redacted() -> None:
    tokens = pg_parser.scan("SELECT 1, 1.5, 'a', B'1', X'f', U&'x', $$y$$, E'z'")
    kinds = {t.name for t in tokens} - {"SELECT", "ASCII_44"}
    assert kinds <= sql_redact._LITERAL_TOKENS
