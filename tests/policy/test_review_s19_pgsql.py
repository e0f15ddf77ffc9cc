"""SQL analysis findings of the s19 red-team review of the PostgreSQL broker (the wire probes
are in tests/proxy_pg/test_review_s19_pgsql.py); each test failed before its fix."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.policy.sql import analyze_sql, analyze_sql_uncached

from .conftest import policies, request

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

AGENT = policies(
    """
    rules:
      - id: agent-public
        effect: allow
        sql: {statements: [select, set, ddl, truncate, insert, delete], tables: ["public.*"]}
      - id: no-vault
        effect: deny
        sql: {statements: ["*"], tables: ["vault.*"]}
    """
)


def decide(query: str) -> str:
    return AGENT.decide(request("sql", {"query": query})).decision


def relations(query: str) -> set[str]:
    return set(analyze_sql_uncached(query).statements[0].relations)


# --- a SQL function's string body is parsed at each call, under the caller's path -------------

BODY = "CREATE FUNCTION f() RETURNS bigint LANGUAGE sql {} AS 'SELECT count(*) FROM {}'"


@pytest.mark.parametrize(
    ("clause", "table", "expected"),
    [
        ("", "items", {"*.*", "public.items"}),
        ("", "public.items", {"public.items"}),
        ("", "pg_class", {"*.*", "pg_catalog.pg_class"}),
        ("SET search_path = public", "items", {"public.items"}),
        ("SET search_path FROM CURRENT", "items", {"public.items"}),
        ('SET search_path = "$user", public', "items", {"*.*", "public.items"}),
        ("SET work_mem = '1MB'", "items", {"*.*", "public.items"}),
    ],
)
def test_an_unpinned_function_body_names_any_relation(
    clause: str, table: str, expected: set[str]
) -> None:
    assert relations(BODY.format(clause, table)) == expected


def test_a_body_resolved_at_creation_keeps_its_schema() -> None:
    atomic = "CREATE FUNCTION f() RETURNS bigint LANGUAGE sql RETURN (SELECT count(*) FROM items)"
    assert relations(atomic) == {"public.items"}
    regclass = "CREATE FUNCTION f() RETURNS bigint LANGUAGE sql AS 'SELECT nextval(''s'')'"
    assert relations(regclass) == {"*.*", "public.s"}


@pytest.mark.parametrize(
    "query",
    [
        "ALTER FUNCTION f() SET search_path = vault",
        "ALTER FUNCTION f() RESET search_path",
        "ALTER PROCEDURE p() RESET ALL",
        'ALTER ROUTINE f SET "Search_Path" TO public',
    ],
)
def test_alter_function_moving_the_path_names_any_relation(query: str) -> None:
    assert relations(query) == {"*.*"}
    assert decide(query) == "deny"


def test_alter_function_otherwise_names_nothing() -> None:
    assert relations("ALTER FUNCTION f() SECURITY DEFINER") == set()
    assert relations("ALTER FUNCTION f() SET work_mem = '1MB'") == set()


_NAMES = st.sampled_from(["items", "keys", "pg_class", "pg_keys", '"Items"', "t1"])
_CLAUSES = st.sampled_from(
    [
        "",
        "SET search_path = public",
        "SET search_path = vault",
        "SET search_path FROM CURRENT",
        'SET search_path = "$user"',
        "SET search_path TO DEFAULT",
        "SET work_mem = 64",
        "STABLE",
    ]
)


@SETTINGS
@given(_CLAUSES, _NAMES, st.sampled_from(["", "public.", "vault."]), st.booleans())
def test_a_function_body_never_escapes_a_deny_rule(
    clause: str, name: str, schema: str, cached: bool
) -> None:
    """Whatever path a call may run under, a body that could read a vault relation is not
    allowed: unqualified names are pinned to public only by ``SET search_path = public`` or
    ``FROM CURRENT`` (made under public)."""
    query = BODY.format(clause, schema + name)
    analyzed = (analyze_sql if cached else analyze_sql_uncached)(query)
    assert analyzed.statements
    pinned = clause in ("SET search_path = public", "SET search_path FROM CURRENT")
    may_read_vault = schema == "vault." or (schema == "" and not pinned)
    if name == "pg_class" and schema == "" and clause.startswith("SET search_path ="):
        may_read_vault = clause.endswith('"$user"')  # else the catalog's, searched first
    if may_read_vault:
        assert decide(query) != "allow", query


# --- file_fdw's program and filename options are COPY PROGRAM and COPY of a file ---------------


@pytest.mark.parametrize(
    "query",
    [
        "CREATE FOREIGN TABLE x (line text) SERVER files OPTIONS (program 'id')",
        "CREATE FOREIGN TABLE x (line text) SERVER files OPTIONS (filename '/etc/passwd')",
        "ALTER FOREIGN TABLE x OPTIONS (SET program 'id')",
        "ALTER TABLE x OPTIONS (ADD filename 'PG_VERSION')",
        "ALTER FOREIGN TABLE x ALTER COLUMN line OPTIONS (ADD \"Program\" 'id')",
        "CREATE SERVER s FOREIGN DATA WRAPPER w OPTIONS (program 'id')",
        "CREATE SCHEMA s CREATE TABLE t (a int) WITH (filename = 1)",
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql SET search_path = public "
        "AS 'CREATE FOREIGN TABLE x (l text) SERVER files OPTIONS (program ''id'')'",
    ],
)
def test_server_side_file_options_are_forbidden(query: str) -> None:
    assert analyze_sql(query).statements[0].forbidden is not None
    decision = AGENT.decide(request("sql", {"query": query}))
    assert (decision.decision, decision.reason) == ("deny", "sql-forbidden")


@pytest.mark.parametrize(
    "query",
    [
        "CREATE FOREIGN TABLE x (line text) SERVER s OPTIONS (table_name 'y')",
        "COPY t FROM STDIN (FORMAT csv, HEADER true)",
        "CREATE TABLE t (a int) WITH (fillfactor = 50)",
        "EXPLAIN (ANALYZE false) SELECT 1",
    ],
)
def test_other_options_are_not(query: str) -> None:
    assert analyze_sql(query).statements[0].forbidden is None


_OPTION_NAMES = st.sampled_from(["program", "filename", "PROGRAM", "FileName", "format", "prog"])


@SETTINGS
@given(
    _OPTION_NAMES,
    st.sampled_from(
        [
            "CREATE FOREIGN TABLE x (l text) SERVER s OPTIONS ({})",
            "ALTER FOREIGN TABLE x OPTIONS (ADD {})",
            "ALTER SERVER s OPTIONS (SET {})",
        ]
    ),
)
def test_a_server_side_option_is_never_allowed(name: str, template: str) -> None:
    query = template.format(f"\"{name}\" 'x'")
    forbidden = analyze_sql_uncached(query).statements[0].forbidden is not None
    assert forbidden == (name.lower() in ("program", "filename"))
    if forbidden:
        assert decide(query) == "deny"


# --- CASCADE acts on objects the statement does not name ----------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "TRUNCATE parents CASCADE",
        "DROP TABLE parents CASCADE",
        "DROP TYPE public.mood CASCADE",
        "DROP SCHEMA public CASCADE",
        "ALTER TABLE parents DROP COLUMN id CASCADE",
        "ALTER DOMAIN d DROP CONSTRAINT c CASCADE",
    ],
)
def test_cascade_names_any_relation(query: str) -> None:
    assert "*.*" in relations(query)
    assert decide(query) == "deny"  # no-vault: it may reach vault's objects


@pytest.mark.parametrize(
    "query",
    ["TRUNCATE parents", "TRUNCATE parents RESTRICT", "DROP TABLE parents",
     "ALTER TABLE parents DROP COLUMN id", "REVOKE SELECT ON parents FROM bob CASCADE"],
)  # fmt: skip
def test_without_cascade_only_the_named_relations(query: str) -> None:
    assert relations(query) == {"public.parents"}


# --- a table pattern names a table as PostgreSQL stores it: at most 63 bytes --------------------

_LONG_NAMES = st.text(alphabet="abcxyz_é0", min_size=1, max_size=80).filter(
    lambda n: not n[0].isdigit()
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _LONG_NAMES,
    st.sampled_from(
        [
            'SELECT * FROM "{}"',
            'SELECT * FROM public."{}"',
            'DELETE FROM "{}"',
            "SELECT nextval('\"{}\"')",
        ]
    ),
)
def test_a_deny_rule_naming_a_table_matches_however_long(name: str, template: str) -> None:
    """PostgreSQL cuts a name to 63 bytes when it makes the table and in every statement: a
    deny rule naming it as written matches a statement naming it as written, or cut."""
    rules = policies(
        f"""
        rules:
          - id: all
            effect: allow
            sql: {{statements: ["*"], tables: ["*.*"]}}
          - id: no-this
            effect: deny
            sql: {{statements: ["*"], tables: ["public.{name}"]}}
        """
    )
    stored = name.encode()[:63].decode("utf-8", "ignore")
    for spelling in {name, stored}:
        query = template.format(spelling)
        assert rules.decide(request("sql", {"query": query})).decision == "deny", query


# --- the value of a custom setting written as a name is a literal all the same ------------------

from tether.policy.sql_redact import redact  # noqa: E402


@pytest.mark.parametrize(
    ("query", "redacted"),
    [
        ("SET app.token = sk_live_abcdef", "SET app.token = ?"),
        ('SET app.token TO "sk_live_abc"', "SET app.token TO ?"),
        ("SET LOCAL app.tenant = acme; SELECT 1", "SET LOCAL app.tenant = ?; SELECT ?"),
        ("ALTER ROLE bob SET app.key = abc", "ALTER ROLE bob SET app.key = ?"),
        ("SET app.x = -5", "SET app.x = -?"),
        ("SET search_path = vault", "SET search_path = vault"),  # configuration, kept
        ("SET app.t = DEFAULT", "SET app.t = DEFAULT"),
    ],
)
def test_custom_setting_values_are_redacted(query: str, redacted: str) -> None:
    assert redact(query) == redacted
    assert analyze_sql(query).redacted == redacted


@SETTINGS
@given(st.text(alphabet="abcxyz_é09", min_size=1, max_size=20).filter(lambda v: v[0].isalpha()))
def test_a_custom_setting_value_never_reaches_the_trail(value: str) -> None:
    value = "tok" + value  # never a part of the statement's other words
    for query in (f"SET app.v = {value}", f'SET SESSION app.v TO "{value}"',
                  f"ALTER ROLE r SET app.v = {value}"):  # fmt: skip
        assert value not in redact(query), query
