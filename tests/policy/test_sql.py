"""Conformance of the SQL analyzer with spec 5.3 and the decisions documented where it is silent."""

from __future__ import annotations

import threading

import pytest

from tether.policy import sql, sql_analyze
from tether.policy.errors import SqlParseError
from tether.policy.lru import Lru
from tether.policy.sql import (
    STATEMENT_CLASSES,
    SqlStatement,
    analyze_sql,
    analyze_sql_uncached,
    clear_sql_caches,
    is_forbidden_function,
)


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    clear_sql_caches()


def one(query: str, default_schema: str = "public") -> SqlStatement:
    statements = analyze_sql(query, default_schema).statements
    assert len(statements) == 1, statements
    return statements[0]


# --- classes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "classes"),
    [
        ("SELECT 1", {"select"}),
        ("VALUES (1), (2)", {"select"}),
        ("TABLE t", {"select"}),
        ("SHOW work_mem", {"select"}),
        ("COPY t TO STDOUT", {"select"}),
        ("COPY (SELECT 1) TO STDOUT WITH (FORMAT csv)", {"select"}),
        ("INSERT INTO t VALUES (1)", {"insert"}),
        ("INSERT INTO t DEFAULT VALUES", {"insert"}),
        ("INSERT INTO t SELECT * FROM s", {"insert", "select"}),
        ("INSERT INTO t VALUES ((SELECT max(a) FROM s))", {"insert", "select"}),
        ("INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 2", {"insert", "update"}),
        ("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", {"insert"}),
        ("COPY t FROM STDIN", {"insert"}),
        ("UPDATE t SET a = 1", {"update"}),
        ("UPDATE t SET a = (SELECT 1)", {"update", "select"}),
        ("SELECT * FROM t FOR UPDATE", {"select", "update"}),
        ("SELECT * FROM t FOR SHARE", {"select", "update"}),
        ("SELECT * FROM t FOR KEY SHARE SKIP LOCKED", {"select", "update"}),
        ("DELETE FROM t WHERE a = 1", {"delete"}),
        ("DELETE FROM t WHERE a IN (SELECT a FROM s)", {"delete", "select"}),
        ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", {"merge"}),
        ("TRUNCATE a, b", {"truncate"}),
        ("CREATE TABLE t (a int)", {"ddl"}),
        ("ALTER TABLE t ADD COLUMN b int", {"ddl"}),
        ("DROP TABLE t", {"ddl"}),
        ("COMMENT ON TABLE t IS 'x'", {"ddl"}),
        ("REFRESH MATERIALIZED VIEW mv", {"ddl"}),
        ("CREATE INDEX ON t (a)", {"ddl"}),
        ("CREATE ROLE bob", {"ddl"}),
        ("SELECT * INTO t2 FROM t", {"ddl", "select"}),
        ("CREATE TABLE t2 AS SELECT * FROM t", {"ddl", "select"}),
        ("CREATE VIEW v AS SELECT * FROM t", {"ddl", "select"}),
        ("GRANT SELECT ON t TO bob", {"grant"}),
        ("REVOKE SELECT ON t FROM bob", {"grant"}),
        ("GRANT admin TO bob", {"grant"}),
        ("REVOKE admin FROM bob", {"grant"}),
        ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", {"ddl", "grant"}),
        ("BEGIN", {"transaction"}),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", {"transaction"}),
        ("COMMIT", {"transaction"}),
        ("ROLLBACK", {"transaction"}),
        ("SAVEPOINT s", {"transaction"}),
        ("RELEASE SAVEPOINT s", {"transaction"}),
        ("ROLLBACK TO SAVEPOINT s", {"transaction"}),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", {"transaction"}),
        ("PREPARE TRANSACTION 'x'", {"other"}),
        ("COMMIT PREPARED 'x'", {"other"}),
        ("ROLLBACK PREPARED 'x'", {"other"}),
        ("SET work_mem = '64MB'", {"set"}),
        ("SET search_path TO a, b", {"set"}),
        ("RESET work_mem", {"set"}),
        ("RESET ALL", {"set"}),
        ("SET TIME ZONE 'UTC'", {"set"}),
        ("SET CONSTRAINTS ALL DEFERRED", {"set"}),
        ("SET ROLE admin", {"role"}),
        ("SET LOCAL ROLE admin", {"role"}),
        ("RESET ROLE", {"role"}),
        ("SET SESSION AUTHORIZATION bob", {"role"}),
        ("RESET SESSION AUTHORIZATION", {"role"}),
        ("EXPLAIN SELECT 1", {"explain"}),
        ("EXPLAIN DELETE FROM t", {"explain"}),
        ("EXPLAIN ANALYZE DELETE FROM t", {"explain", "delete"}),
        ("EXPLAIN (ANALYZE) DELETE FROM t", {"explain", "delete"}),
        ("EXPLAIN (ANALYZE true) DELETE FROM t", {"explain", "delete"}),
        ("EXPLAIN (ANALYZE on, VERBOSE) DELETE FROM t", {"explain", "delete"}),
        ("EXPLAIN (ANALYZE 1) DELETE FROM t", {"explain", "delete"}),
        ("EXPLAIN (ANALYZE false) DELETE FROM t", {"explain"}),
        ("EXPLAIN (ANALYZE off) DELETE FROM t", {"explain"}),
        ("EXPLAIN (ANALYZE 0) DELETE FROM t", {"explain"}),
        ("EXPLAIN (ANALYZE 'OFF') DELETE FROM t", {"explain"}),
        ("EXPLAIN (ANALYZE 2) DELETE FROM t", {"explain", "delete"}),
        ("EXPLAIN SELECT * FROM t FOR UPDATE", {"explain"}),
        ("EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE", {"explain", "select", "update"}),
        ("PREPARE p AS DELETE FROM t WHERE a = $1", {"delete"}),
        ("PREPARE p (int) AS SELECT $1", {"select"}),
        ("VACUUM t", {"other"}),
        ("ANALYZE t", {"other"}),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", {"other"}),
        ("LISTEN ch", {"other"}),
        ("NOTIFY ch, 'x'", {"other"}),
        ("DISCARD ALL", {"other"}),
        ("CHECKPOINT", {"other"}),
        ("CALL p(1)", {"other"}),
        ("DECLARE c CURSOR FOR SELECT 1", {"other", "select"}),
        ("FETCH 5 FROM c", {"other"}),
        ("CLOSE c", {"other"}),
        ("DEALLOCATE p", {"other"}),
        ("CLUSTER t USING t_pkey", {"other"}),
        ("REINDEX TABLE t", {"other"}),
    ],
)
def test_statement_classes(query: str, classes: set[str]) -> None:
    assert one(query).classes == classes


def test_data_modifying_cte_needs_its_own_class() -> None:
    s = one("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d")
    assert s.classes == {"select", "delete"}
    assert s.relations == {"public.t"}


def test_statement_nodes_anywhere_add_their_class() -> None:
    query = (
        "WITH a AS (UPDATE u SET x = 1 RETURNING *), b AS (INSERT INTO i SELECT * FROM a "
        "RETURNING *) SELECT * FROM b WHERE EXISTS (SELECT 1 FROM s)"
    )
    assert one(query).classes == {"select", "update", "insert"}
    assert one("COPY (DELETE FROM t RETURNING *) TO STDOUT").classes == {"select", "delete"}
    merge = "WITH m AS (MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE) SELECT 1"
    assert "merge" in analyze_sql_uncached(merge).statements[0].classes


def test_every_class_is_a_known_class() -> None:
    assert {
        "select", "insert", "update", "delete", "merge", "truncate", "ddl", "grant",
        "transaction", "set", "role", "explain", "other",
    } == STATEMENT_CLASSES  # fmt: skip


# --- relations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "relations"),
    [
        ("SELECT * FROM t", {"public.t"}),
        ("SELECT * FROM s.t JOIN u USING (a)", {"s.t", "public.u"}),
        ("SELECT * FROM pg_shadow", {"pg_catalog.pg_shadow"}),
        ("SELECT * FROM pg_catalog.pg_authid", {"pg_catalog.pg_authid"}),
        ("SELECT * FROM information_schema.tables", {"information_schema.tables"}),
        ("SELECT * FROM db.s.t", {"s.t"}),
        ('SELECT * FROM "Mixed"."Case", Folded.Name', {"Mixed.Case", "folded.name"}),
        ('SELECT * FROM "a.b"."c"', {'"a.b".c'}),
        ('SELECT * FROM s."*"', {'s."*"'}),
        (
            "SELECT (SELECT max(a) FROM s) FROM t WHERE b IN (SELECT b FROM u)",
            {"public.s", "public.t", "public.u"},
        ),
        ("SELECT * FROM t, LATERAL (SELECT * FROM u) x", {"public.t", "public.u"}),
        ("SELECT * FROM t FOR UPDATE OF t", {"public.t"}),
        ("SELECT * FROM s.t AS x FOR UPDATE OF x", {"s.t"}),
        ("INSERT INTO t SELECT * FROM s", {"public.t", "public.s"}),
        ("UPDATE t SET a = 1 FROM s WHERE s.id = t.id", {"public.t", "public.s"}),
        ("DELETE FROM t USING s WHERE s.id = t.id", {"public.t", "public.s"}),
        ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", {"public.t", "public.s"}),
        ("SELECT * INTO n FROM t", {"public.n", "public.t"}),
        ("CREATE TABLE n AS SELECT * FROM t", {"public.n", "public.t"}),
        ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", {"public.mv", "public.t"}),
        ("CREATE VIEW v AS SELECT * FROM t", {"public.v", "public.t"}),
        (
            "CREATE TABLE n (a int REFERENCES r (a)) INHERITS (p)",
            {"public.n", "public.r", "public.p"},
        ),
        ("CREATE TABLE n (LIKE t)", {"public.n", "public.t"}),
        ("ALTER TABLE t ADD COLUMN b int", {"public.t"}),
        ("ALTER TABLE s.a RENAME TO b", {"s.a", "s.b"}),
        ("ALTER TABLE a SET SCHEMA c", {"public.a", "c.a"}),
        ("ALTER TABLE t RENAME COLUMN a TO b", {"public.t"}),
        ("CREATE INDEX i ON s.t (a)", {"s.t"}),
        ("REFRESH MATERIALIZED VIEW s.mv", {"s.mv"}),
        ("TRUNCATE a, s.b", {"public.a", "s.b"}),
        ("LOCK TABLE a, s.b", {"public.a", "s.b"}),
        ("VACUUM (ANALYZE) a, s.b (c)", {"public.a", "s.b"}),
        ("ANALYZE s.t", {"s.t"}),
        ("CLUSTER s.t", {"s.t"}),
        ("REINDEX TABLE s.t", {"s.t"}),
        ("COPY s.t TO STDOUT", {"s.t"}),
        ("COPY s.t FROM STDIN", {"s.t"}),
        ("GRANT SELECT ON t, s.u TO bob", {"public.t", "s.u"}),
        ("COMMENT ON TABLE s.t IS 'x'", {"s.t"}),
        ("COMMENT ON COLUMN s.t.c IS 'x'", {"s.t"}),
        ("SECURITY LABEL ON TABLE t IS 'x'", {"public.t"}),
        ("DROP TABLE a.b, c", {"a.b", "public.c"}),
        ("DROP VIEW IF EXISTS v", {"public.v"}),
        ("DROP INDEX s.i", {"s.i"}),
        ("DROP TRIGGER tr ON s.t", {"s.t"}),
        ("DROP POLICY p ON t", {"public.t"}),
        ("CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", {"public.t"}),
        ("CREATE POLICY p ON t USING (true)", {"public.t"}),
        ("CREATE SEQUENCE s.seq", {"s.seq"}),
        ("ALTER TABLE t ATTACH PARTITION p FOR VALUES IN (1)", {"public.t", "public.p"}),
    ],
)
def test_relations(query: str, relations: set[str]) -> None:
    assert one(query).relations == relations


@pytest.mark.parametrize(
    ("query", "relations"),
    [
        ("DROP SCHEMA s1, s2", {"s1.*", "s2.*"}),
        ("DROP SCHEMA s1 CASCADE", {"s1.*", "*.*"}),
        ("GRANT SELECT ON ALL TABLES IN SCHEMA s TO bob", {"s.*"}),
        ("GRANT USAGE ON SCHEMA s TO bob", {"s.*"}),
        ("ALTER DEFAULT PRIVILEGES IN SCHEMA s GRANT SELECT ON TABLES TO bob", {"s.*"}),
        ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", {"*.*"}),
        ("ALTER SCHEMA s RENAME TO t", {"s.*", "t.*"}),
        ("ALTER SCHEMA s OWNER TO bob", {"s.*"}),
        ("REINDEX SCHEMA s", {"s.*"}),
        ("REINDEX DATABASE d", {"*.*"}),
        ("DROP OWNED BY bob", {"*.*"}),
        ("REASSIGN OWNED BY bob TO alice", {"*.*"}),
        ("VACUUM", {"*.*"}),
        ("ANALYZE", {"*.*"}),
        ("CLUSTER", {"*.*"}),
    ],
)
def test_whole_schema_and_database_statements(query: str, relations: set[str]) -> None:
    assert one(query).relations == relations


def test_cte_names_are_not_relations() -> None:
    assert one("WITH users AS (SELECT 1) SELECT * FROM users").relations == set()
    assert one("WITH x AS (SELECT 1) SELECT * FROM x, users").relations == {"public.users"}
    assert one("WITH x AS (SELECT 1) SELECT * FROM public.x").relations == {"public.x"}


def test_cte_scoping() -> None:
    # a non-recursive WITH sees only earlier CTEs
    assert one("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a").relations == {
        "public.b"
    }
    assert one("WITH b AS (SELECT 1), a AS (SELECT * FROM b) SELECT * FROM a").relations == set()
    # a CTE does not see itself unless RECURSIVE
    assert one("WITH t AS (SELECT * FROM t) SELECT * FROM t").relations == {"public.t"}
    recursive = "WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT * FROM r) SELECT * FROM r"
    assert one(recursive).relations == set()
    forward = "WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a"
    assert one(forward).relations == set()
    # a nested WITH's names do not leak out of its sub-query
    nested = "SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x) s, x"
    assert one(nested).relations == {"public.x"}
    # outer names are visible in sub-queries and set operations
    outer = "WITH x AS (SELECT 1) SELECT * FROM x UNION SELECT * FROM (SELECT * FROM x) y"
    assert one(outer).relations == set()


def test_write_targets_are_always_relations() -> None:
    assert one("WITH x AS (SELECT 1) INSERT INTO x SELECT * FROM x").relations == {"public.x"}
    assert one("WITH x AS (SELECT 1) UPDATE x SET a = 1").relations == {"public.x"}
    assert one("WITH x AS (SELECT 1) DELETE FROM x").relations == {"public.x"}
    merge = "WITH x AS (SELECT 1 a) MERGE INTO x USING x AS s ON true WHEN MATCHED THEN DELETE"
    assert one(merge).relations == {"public.x"}
    assert one("WITH x AS (SELECT 1) SELECT * INTO x FROM x").relations == {"public.x"}


def test_default_schema() -> None:
    assert one("SELECT * FROM t", "billing").relations == {"billing.t"}
    assert one("SELECT * FROM pg_class", "billing").relations == {"pg_catalog.pg_class"}
    assert one("SELECT * FROM s.t", "billing").relations == {"s.t"}
    assert analyze_sql("SELECT * FROM t", "a") != analyze_sql("SELECT * FROM t", "b")


def test_create_schema_elements_resolve_to_the_new_schema() -> None:
    s = one("CREATE SCHEMA s CREATE TABLE t (a int) CREATE VIEW v AS SELECT * FROM t")
    assert s.relations == {"s.t", "s.v"}


# --- functions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT * FROM (SELECT pg_read_file('/etc/passwd')) s",
        "WITH c AS (SELECT pg_read_file('x')) SELECT * FROM c",
        "SELECT 1 FROM t WHERE pg_read_file('x') <> ''",
        "SELECT pg_catalog.pg_read_file('x')",
        "SELECT \"pg_read_file\"('x')",
        "SELECT length(pg_read_file('x'))",
        "SELECT * FROM pg_ls_dir('.')",
        "SELECT * FROM ROWS FROM (pg_ls_dir('.'))",
        "VALUES (pg_read_binary_file('x'))",
        "SELECT CASE WHEN true THEN pg_stat_file('x') END",
        "INSERT INTO t VALUES (pg_read_file('x'))",
        "UPDATE t SET a = pg_read_file('x')",
        "DELETE FROM t WHERE a = pg_read_file('x') RETURNING pg_read_file('y')",
        "COPY (SELECT pg_read_file('x')) TO STDOUT",
        "EXPLAIN SELECT pg_read_file('x')",
        "PREPARE p AS SELECT pg_read_file($1)",
        "CREATE VIEW v AS SELECT pg_read_file('x')",
        "CREATE TABLE t (a text DEFAULT pg_read_file('x'))",
        "SELECT dblink_exec('host=x', 'DROP TABLE t')",
        "SELECT ext.dblink('host=x', 'SELECT 1')",
        "SELECT lo_import('/etc/passwd')",
        "SELECT lo_export(1, '/tmp/x')",
        "SELECT loread(0, 1)",
        "SELECT pg_terminate_backend(1)",
        "SELECT pg_cancel_backend(1)",
        "SELECT pg_reload_conf()",
        "SELECT set_config('search_path', 'evil', false)",
        "SELECT query_to_xml('SELECT * FROM secret', true, true, '')",
        "SELECT table_to_xml('secret', true, true, '')",
        "SELECT schema_to_xml('s', true, true, '')",
        "SELECT database_to_xml(true, true, '')",
        "SELECT ts_stat('SELECT v FROM secret')",
        "SELECT pg_file_write('x', 'y', false)",
        "SELECT pg_rotate_logfile()",
        "SELECT pg_promote()",
        "SELECT * FROM pg_logical_slot_get_changes('s', NULL, NULL)",
        "CALL dblink_exec('x')",
        "SELECT count(*) FILTER (WHERE pg_read_file('x') = '') FROM t",
        "SELECT sum(a) OVER (ORDER BY pg_read_file('x')) FROM t",
        "SELECT * FROM t ORDER BY pg_read_file('x') LIMIT 1",
        "SELECT a FROM t GROUP BY a HAVING max(pg_read_file('x')) = ''",
        "SELECT * FROM t JOIN u ON pg_read_file('x') = ''",
        "SELECT ARRAY[pg_read_file('x')]",
        "SELECT coalesce(null, pg_read_file('x'))",
        "SELECT pg_read_file('x') IS NULL",
        "SELECT JSON_OBJECT('k': pg_read_file('x'))",
        "SELECT f(a => pg_read_file('x'))",
    ],
)
def test_forbidden_functions_are_found_anywhere(query: str) -> None:
    s = one(query)
    assert s.forbidden_functions
    assert s.forbidden_functions <= s.functions


def test_function_names() -> None:
    s = one("SELECT pg_catalog.lower('A'), public.f(1), COUNT(*), \"MyFunc\"()")
    assert s.functions == {"lower", "public.f", "count", "myfunc"}
    assert s.forbidden_functions == set()
    assert one("SELECT pg_catalog.pg_read_file('x')").forbidden_functions == {"pg_read_file"}
    assert one("SELECT ext.dblink_exec('x')").forbidden_functions == {"ext.dblink_exec"}
    assert one("SELECT \"PG_READ_FILE\"('x')").forbidden_functions == {"pg_read_file"}


def test_ddl_that_names_a_forbidden_function() -> None:
    assert one("GRANT EXECUTE ON FUNCTION pg_read_file(text) TO bob").forbidden_functions == {
        "pg_read_file"
    }
    trigger = "CREATE TRIGGER t AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION lo_manage()"
    assert one(trigger).forbidden_functions == {"lo_manage"}
    operator = "CREATE OPERATOR !!! (FUNCTION = pg_read_file, RIGHTARG = text)"
    assert one(operator).forbidden_functions == {"pg_read_file"}
    cast = "CREATE CAST (text AS int) WITH FUNCTION pg_read_file(text)"
    assert one(cast).forbidden_functions == {"pg_read_file"}
    assert one("GRANT EXECUTE ON FUNCTION lower(text) TO bob").forbidden_functions == set()


@pytest.mark.parametrize(
    ("name", "forbidden"),
    [
        ("pg_read_file", True),
        ("PG_READ_FILE", True),
        ("pg_ls_waldir", True),
        ("dblink_connect_u", True),
        ("lo_unlink", True),
        ("query_to_xml_and_xmlschema", True),
        ("crosstab3", True),
        ("set_config", True),
        ("current_setting", False),
        ("lower", False),
        ("cursor_to_xml", False),
        ("pg_sleep", False),
    ],
)
def test_forbidden_function_list(name: str, forbidden: bool) -> None:
    assert is_forbidden_function(name) is forbidden


# --- always forbidden ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "classes"),
    [
        ("COPY t TO PROGRAM 'sh -c id'", {"select"}),
        ("COPY t FROM PROGRAM 'curl evil'", {"insert"}),
        ("COPY t FROM '/etc/passwd'", {"insert"}),
        ("COPY t TO '/tmp/out'", {"select"}),
        ("COPY (SELECT 1) TO '/tmp/out'", {"select"}),
        ("DO $$ BEGIN PERFORM 1; END $$", {"other"}),
        ("DO LANGUAGE plpgsql 'BEGIN END'", {"other"}),
        ("EXECUTE p(1)", {"other"}),
        ("EXPLAIN EXECUTE p(1)", {"explain"}),
        ("CREATE TABLE x AS EXECUTE p", {"ddl", "other"}),
        ("LOAD 'auto_explain'", {"other"}),
        ("ALTER SYSTEM SET archive_command = 'sh'", {"ddl", "set"}),
        ("CREATE EXTENSION dblink", {"ddl"}),
        ("ALTER EXTENSION dblink UPDATE", {"ddl"}),
        ("CREATE LANGUAGE plperlu", {"ddl"}),
        ("CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p", {"ddl"}),
        ("ALTER SUBSCRIPTION s CONNECTION 'host=evil'", {"ddl"}),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$", {"ddl"}),
        ("CREATE FUNCTION f() RETURNS int AS 'lib', 'sym' LANGUAGE c", {"ddl"}),
        ("CREATE FUNCTION f(text) RETURNS text LANGUAGE internal AS 'pg_read_file_all'", {"ddl"}),
        ("CREATE PROCEDURE p() LANGUAGE plperlu AS 'system(1)'", {"ddl"}),
        ("CREATE FUNCTION f() RETURNS int AS 'SELECT 1'", {"ddl"}),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELEC 1'", {"ddl"}),
    ],
)
def test_always_forbidden(query: str, classes: set[str]) -> None:
    s = one(query)
    assert s.forbidden is not None
    assert s.classes == classes


@pytest.mark.parametrize(
    "query",
    [
        "COPY t TO STDOUT",
        "COPY t FROM STDIN",
        "PREPARE p AS DELETE FROM t",
        "CALL p()",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1",
        "CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; END",
        "ALTER EXTENSION e ADD TABLE t",
        "DEALLOCATE p",
    ],
)
def test_not_forbidden(query: str) -> None:
    assert one(query).forbidden is None


def test_sql_function_bodies_are_checked() -> None:
    body = (
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql "
        "AS 'DELETE FROM s.t; SELECT pg_read_file(''x'')'"
    )
    s = one(body)
    assert s.forbidden is None
    assert s.classes == {"ddl", "delete", "select"}
    assert s.relations == {"s.t"}
    assert s.forbidden_functions == {"pg_read_file"}
    atomic = (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC DELETE FROM t; SELECT 1; END"
    )
    assert one(atomic).classes == {"ddl", "delete", "select"}
    nested = "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'DO $x$ BEGIN END $x$'"
    assert one(nested).forbidden is not None


# --- search_path -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "search_path"),
    [
        ("SET search_path TO a, b", ("a", "b")),
        ("SET search_path = a", ("a",)),
        ("SET LOCAL search_path TO a", ("a",)),
        ("SET SESSION search_path TO a", ("a",)),
        (
            'SET search_path TO "$user", public, "Mixed", \'quoted, one\'',
            ("$user", "public", "Mixed", "quoted, one"),
        ),
        ("SET SCHEMA 'x'", ("x",)),
        ("SET search_path TO DEFAULT", ()),
        ("SET search_path FROM CURRENT", None),
        ("RESET search_path", ()),
        ("RESET ALL", ()),
        ("DISCARD ALL", ()),
        ("SET work_mem = '1GB'", None),
        ("SELECT 1", None),
        ("DISCARD PLANS", None),
        ("ALTER ROLE bob SET search_path TO evil", None),
    ],
)
def test_search_path(query: str, search_path: tuple[str, ...] | None) -> None:
    assert one(query).search_path == search_path


# --- texts, several statements, redaction ----------------------------------------------------


def test_several_statements_keep_their_own_text() -> None:
    query = "  -- lead\n SELECT 1;  /* c */ DELETE FROM t WHERE a = 'x;y' ;\nSET ROLE r"
    statements = analyze_sql(query).statements
    assert [s.text for s in statements] == [
        "SELECT 1",
        "DELETE FROM t WHERE a = 'x;y'",
        "SET ROLE r",
    ]
    assert [s.classes for s in statements] == [{"select"}, {"delete"}, {"role"}]


def test_texts_of_non_ascii_queries() -> None:
    statements = analyze_sql("SELECT 'é€𝄞' AS \"ü\"; SELECT 2 -- ñ").statements
    assert [s.text for s in statements] == ["SELECT 'é€𝄞' AS \"ü\"", "SELECT 2 -- ñ"]


def test_empty_statements_are_skipped() -> None:
    assert [s.text for s in analyze_sql(";;SELECT 1;;").statements] == ["SELECT 1"]


@pytest.mark.parametrize(
    ("query", "redacted"),
    [
        (
            "SELECT id FROM t WHERE a = 42 AND b = 'open' AND c = -1.5e3",
            "SELECT id FROM t WHERE a = ? AND b = ? AND c = -?",
        ),
        ("SELECT 1 -- keep 'this' comment", "SELECT ? -- keep 'this' comment"),
        ('SELECT "col1", t2.x FROM t2 WHERE y = $1', 'SELECT "col1", t2.x FROM t2 WHERE y = $1'),
        ("SELECT E'a\\'b', $$x$$, $q$y$q$, B'101', X'ff'", "SELECT ?, ?, ?, ?, ?"),
        ("SELECT 'a'\n'b' AS c", "SELECT ? AS c"),
        ("CREATE ROLE bob PASSWORD 'hunter2'", "CREATE ROLE bob PASSWORD ?"),
        ("SELECT U&'d\\0061t' UESCAPE '\\'", "SELECT ? UESCAPE ?"),
        ("SELECT 'ünï' FROM t", "SELECT ? FROM t"),
        ("SELECT n'x', date'2020-01-01'", "SELECT n?, date?"),
        ("SELECT a FROM t", "SELECT a FROM t"),
    ],
)
def test_redaction(query: str, redacted: str) -> None:
    assert analyze_sql(query).redacted == redacted


# --- rejected queries ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "",
        "   \n\t",
        "-- only a comment",
        "/* only a comment */",
        ";",
        ";;  ;",
        "SELEC 1",
        "SELECT 'unterminated",
        "SELECT 1\x00; DROP TABLE t",
        "SELECT '\ud800'",
        "SELECT 1::float(0)",
        "SELECT " + "(" * 20000 + "1" + ")" * 20000,
    ],
)
def test_parse_errors(query: str) -> None:
    with pytest.raises(SqlParseError) as info:
        analyze_sql(query)
    assert info.value.reason == "sql-parse-error"
    assert info.value.detail


def test_size_bound() -> None:
    big = "SELECT 1" + " " * sql.MAX_QUERY_BYTES
    with pytest.raises(SqlParseError, match="longer"):
        analyze_sql(big)
    wide = "SELECT '" + "é" * (sql.MAX_QUERY_BYTES // 2) + "'"
    with pytest.raises(SqlParseError, match="longer"):
        analyze_sql(wide)


def test_deep_nesting_is_a_parse_error_not_a_crash() -> None:
    deep = "SELECT " + "f(" * 900 + "1" + ")" * 900
    with pytest.raises(SqlParseError):
        analyze_sql(deep)


def test_non_string_query() -> None:
    with pytest.raises(SqlParseError):
        analyze_sql(b"SELECT 1")  # type: ignore[arg-type]

    class Sneaky(str):
        def __hash__(self) -> int:
            return 0

    assert analyze_sql(Sneaky("SELECT 1")).statements[0].text == "SELECT 1"


# --- caches ----------------------------------------------------------------------------------


def test_exact_cache_returns_the_same_analysis() -> None:
    first = analyze_sql("SELECT * FROM t WHERE a = 1")
    assert analyze_sql("SELECT * FROM t WHERE a = 1") is first
    assert analyze_sql("SELECT * FROM t WHERE a = 1", "other") is not first


def test_shape_cache_serves_other_literals_with_their_own_texts() -> None:
    analyze_sql("SELECT * FROM t WHERE a = 1 AND b = 'x'; SELECT 2")
    assert len(sql._SHAPES) == 1
    query = "select * FROM t  WHERE a = 12345 AND b = 'it''s; here'; SELECT  -7"
    cached = analyze_sql(query)
    assert len(sql._SHAPES) == 1  # served from the shape cache, nothing new stored
    assert cached == analyze_sql_uncached(query)
    assert [s.text for s in cached.statements] == [
        "select * FROM t  WHERE a = 12345 AND b = 'it''s; here'",
        "SELECT  -7",
    ]
    assert cached.redacted == "select * FROM t  WHERE a = ? AND b = ?; SELECT  -?"


def test_literal_sensitive_statements_are_not_shape_cached() -> None:
    for query in (
        "SET search_path TO a",
        "EXPLAIN (ANALYZE 0) DELETE FROM t",
        "COPY t TO '/x'",
        "CREATE TABLE t (a int DEFAULT 1)",
        "SELECT 1; SET work_mem = '1MB'",
    ):
        analyze_sql(query)
    assert len(sql._SHAPES) == 0
    assert one("SET search_path TO b").search_path == ("b",)
    assert one("EXPLAIN (ANALYZE 1) DELETE FROM t").classes == {"explain", "delete"}


def test_shape_cache_never_hides_a_parse_error() -> None:
    analyze_sql("SELECT 1::float(10)")
    with pytest.raises(SqlParseError):
        analyze_sql("SELECT 1::float(0)")


def test_shape_cache_distinguishes_different_trees() -> None:
    analyze_sql("SELECT * FROM U&\"!0070g_class\" UESCAPE '!'")
    s = one("SELECT * FROM U&\"!0070g_class\" UESCAPE '#'")
    assert s.relations == {"public.!0070g_class"}
    analyze_sql("SELECT * FROM t WHERE a = 1")
    assert one("SELECT * FROM t WHERE a = b").relations == {"public.t"}


def test_normalized_cache_serves_new_literals_without_the_json_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    analyze_sql("  /* c */ SELECT a FROM billing.invoices WHERE id = 1 AND s = 'x'  ")
    assert len(sql._NORMALIZED) == 1

    def no_json(query: str) -> str:
        raise AssertionError("parsed to JSON")

    monkeypatch.setattr(sql, "_parse_json", no_json)
    query = "  /* c */ SELECT a FROM billing.invoices WHERE id = -12345 AND s = 'it''s'  "
    cached = analyze_sql(query)
    assert (
        cached.statements[0].text
        == "SELECT a FROM billing.invoices WHERE id = -12345 AND s = 'it''s'"
    )
    assert cached.statements[0].relations == {"billing.invoices"}
    monkeypatch.undo()
    assert cached == analyze_sql_uncached(query)


def test_normalized_cache_keeps_names_schemas_and_non_dml_apart() -> None:
    analyze_sql("SELECT * FROM t WHERE a = 1")
    assert one("SELECT * FROM u WHERE a = 2").relations == {"public.u"}
    assert one("SELECT * FROM t WHERE a = 3", "s").relations == {"s.t"}
    assert one("SELECT * FROM t WHERE a = b").relations == {"public.t"}
    for query in ("SET search_path TO a", "COPY t TO '/x'", "SELECT 1; SELECT 2", "SELECT $1"):
        analyze_sql(query)
    assert not any(
        key[0].startswith(("SET", "COPY")) or ";" in key[0] for key in sql._NORMALIZED._data
    )
    assert one("SET search_path TO b").search_path == ("b",)


def test_cache_bounds() -> None:
    lru: Lru[int, str] = Lru(entries=3, budget=100)
    for key in range(5):
        lru.put(key, str(key), 1)
    assert len(lru) == 3
    assert lru.get(0) is None
    assert lru.get(2) == "2"
    lru.put(5, "5", 1)  # 3 was least recently used
    assert lru.get(3) is None
    assert lru.get(2) == "2"
    lru.put(6, "big", 100)
    assert len(lru) == 1
    assert lru.get(6) == "big"
    lru.put(6, "smaller", 10)
    assert lru.get(6) == "smaller"
    lru.clear()
    assert len(lru) == 0


def test_long_queries_are_not_cached() -> None:
    query = "SELECT 1" + " " * sql.CACHEABLE_CHARS
    assert analyze_sql(query) is not analyze_sql(query)


def test_threads_get_their_own_results() -> None:
    queries = [f"SELECT * FROM t{i % 7} WHERE a = {i} AND b = 'v{i}'" for i in range(400)]
    expected = {q: analyze_sql_uncached(q) for q in queries}
    failures: list[str] = []

    def work(offset: int) -> None:
        for q in queries[offset:] + queries[:offset]:
            if analyze_sql(q) != expected[q]:
                failures.append(q)

    threads = [threading.Thread(target=work, args=(n * 50,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- the walk itself -------------------------------------------------------------------------

CORPUS = [
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) "
    "SELECT r.n, t.* FROM r LEFT JOIN s.t ON t.id = r.n WHERE EXISTS (SELECT 1 FROM u) "
    "ORDER BY 1 LIMIT 3 FOR UPDATE OF t",
    "INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = EXCLUDED.a RETURNING *",
    "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED AND s.b > 0 THEN UPDATE SET b = s.b "
    "WHEN NOT MATCHED THEN INSERT VALUES (s.a, s.b) RETURNING merge_action()",
    "SELECT JSON_OBJECT('a': 1), JSON_ARRAYAGG(x ORDER BY x), x::jsonb IS JSON OBJECT, "
    "JSON_VALUE(j, '$.a' RETURNING int DEFAULT 0 ON EMPTY) FROM t, "
    "JSON_TABLE(j, '$[*]' COLUMNS (a int PATH '$.a')) jt",
    "SELECT xmlelement(name a, xmlattributes(1 AS b)), XMLSERIALIZE(CONTENT x AS text) FROM t, "
    "XMLTABLE('/r' PASSING x COLUMNS a int PATH 'a') xt",
    "CREATE TABLE p (a int GENERATED ALWAYS AS IDENTITY, b int CHECK (b > 0), "
    'c text COLLATE "C", PRIMARY KEY (a)) PARTITION BY RANGE (a)',
    "CREATE TABLE c PARTITION OF p FOR VALUES FROM (1) TO (10)",
    "ALTER TABLE t ALTER COLUMN a TYPE bigint USING a::bigint, ADD CONSTRAINT f FOREIGN KEY (b) "
    "REFERENCES r (b), OWNER TO bob, REPLICA IDENTITY FULL",
    "CREATE AGGREGATE a (int) (SFUNC = int4pl, STYPE = int)",
    "CREATE OPERATOR CLASS c FOR TYPE int USING btree AS OPERATOR 1 <, "
    "FUNCTION 1 btint4cmp(int, int)",
    "CREATE PUBLICATION pub FOR TABLE t, s.u WITH (publish = 'insert')",
    "CREATE STATISTICS st ON a, b FROM t",
    "CREATE RULE r AS ON INSERT TO t DO INSTEAD DELETE FROM u",
    "CREATE DOMAIN d AS int CHECK (VALUE > 0)",
    "CREATE TYPE ct AS (a int, b text)",
    "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()",
    "ALTER ROLE bob SET work_mem = '1MB'",
    "ALTER DATABASE d SET search_path TO a",
    "IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO l",
    "CREATE FOREIGN TABLE ft (a int) SERVER srv OPTIONS (table_name 't')",
    "SELECT a, rank() OVER w FROM t "
    "WINDOW w AS (PARTITION BY b ORDER BY c ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)",
    "SELECT * FROM t TABLESAMPLE SYSTEM (10) REPEATABLE (1), LATERAL unnest(t.arr) WITH ORDINALITY",
    "SELECT a FROM t GROUP BY GROUPING SETS ((a), ()) HAVING count(*) > 1",
    "UPDATE t SET (a, b) = (SELECT a, b FROM s WHERE s.id = t.id) WHERE CURRENT OF c",
]


def test_the_field_table_covers_every_bare_struct(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: object, body: object, scope: object) -> None:
        raise AssertionError(f"unknown struct reached: {body!r}")

    monkeypatch.setattr(sql_analyze._Walker, "unknown_struct", fail)
    for query in CORPUS:
        analyze_sql_uncached(query)


def test_corpus_relations() -> None:
    assert analyze_sql(CORPUS[0]).statements[0].relations == {"s.t", "public.u"}
    assert analyze_sql(CORPUS[12]).statements[0].relations == {"public.t", "public.u"}
    assert analyze_sql(CORPUS[12]).statements[0].classes == {"ddl", "delete"}
    assert analyze_sql(CORPUS[23]).statements[0].classes == {"update", "select"}


def test_unknown_struct_safety_net() -> None:
    walker = sql_analyze._Walker("public")
    walker.node({"relation": {"relname": "t", "schemaname": "s"}}, frozenset())
    walker.node({"relname": "u", "inh": True}, frozenset())
    walker.node({"NewKindStmt": {"x": 1}, "y": 2}, frozenset())
    facts = walker.facts()
    assert facts.relations == {"s.t", "public.u"}
    assert facts.classes == {"other"}
