"""Adversarial review of the SQL analysis (spec 5.3): relations reached in ways a plain walk
over ``FROM`` items misses, and deny rules that must see whole-schema statements.

Each test here failed before its fix:

* a deny rule on ``public.secrets`` did not match statements that act on all of ``public``
  (``DROP SCHEMA public CASCADE``, ``GRANT ... ALL TABLES IN SCHEMA public``) or on every
  schema (``VACUUM``, ``DROP OWNED``), so a broad allow rule let them through;
* relations named in strings (``nextval('secrets')``, ``'secrets'::regclass``) were not
  relations, so neither ``tables`` of an allow rule nor a deny rule saw them;
* ``CREATE PUBLICATION ... FOR ALL TABLES`` / ``TABLES IN SCHEMA`` reported no relation and
  ``IMPORT FOREIGN SCHEMA ... INTO s`` the wrong ones;
* a ``LANGUAGE sql`` function created with ``SET search_path = vault`` had its string body's
  unqualified names resolved to the default schema, though they run against ``vault``;
* ``SET "ROLE" TO admin`` and ``SET "Search_Path" = vault`` (PostgreSQL looks setting names up
  in any case) were class ``set`` and no search-path change;
* ``xpath_table`` (runs a query given as text) and the functions that read the server's
  configuration files were not forbidden.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser as pg_parser

from tether.policy.sql import analyze_sql, analyze_sql_uncached
from tether.policy.sql_tables import relation_name_parts

from .conftest import policies, request

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BROAD = policies(
    """
    rules:
      - id: dba
        effect: allow
        sql: {statements: ["*"], tables: ["*.*"]}
      - id: no-secrets
        effect: deny
        sql: {statements: ["*"], tables: ["public.secrets"]}
    """
)


def decide(query: str) -> tuple[str, str | None, str]:
    d = BROAD.decide(request("sql", {"query": query}))
    return d.decision, d.rule, d.reason


def relations(query: str) -> set[str]:
    return set(analyze_sql_uncached(query).statements[0].relations)


# --- deny rules and whole-schema statements ------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "DROP SCHEMA public CASCADE",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO mallory",
        "ALTER SCHEMA public RENAME TO exposed",
        "ALTER SCHEMA public OWNER TO mallory",
        "REINDEX SCHEMA public",
        "VACUUM",
        "ANALYZE",
        "DROP OWNED BY bob",
        "REASSIGN OWNED BY bob TO mallory",
        "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO mallory",
    ],
)
def test_deny_rule_matches_statements_on_its_whole_schema(query: str) -> None:
    assert decide(query) == ("deny", "no-secrets", "denied-by-rule")


def test_deny_rule_ignores_other_schemas() -> None:
    # Not CASCADE, which also drops what depends on scratch's objects in any schema (*.*).
    assert decide("DROP SCHEMA scratch") == ("allow", "dba", "allowed")


def test_allow_rule_covers_a_whole_schema_only_with_a_full_glob() -> None:
    ps = policies(
        """
        rules:
          - id: partial
            effect: allow
            sql: {statements: [ddl], tables: ["public.a*", "*.x"]}
          - id: full
            effect: allow
            agents: [owner]
            sql: {statements: [ddl], tables: ["public.*"]}
        """
    )
    query = request("sql", {"query": "DROP SCHEMA public"})
    assert ps.decide(query).decision == "deny"
    assert ps.decide({**query, "agent": {"id": "owner"}}).decision == "allow"
    assert ps.decide({**query, "action": {"sql": {"query": "DROP OWNED BY x"}}}).decision == "deny"


# --- relations named in strings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT currval('secrets')", {"public.secrets"}),
        ("SELECT nextval('secrets')", {"public.secrets"}),
        ("SELECT setval('secrets', 1)", {"public.secrets"}),
        ("SELECT pg_catalog.nextval('Public.Secrets')", {"public.secrets"}),
        ("SELECT nextval(' public . \"secrets\" ')", {"public.secrets"}),
        ("SELECT nextval('\"Secrets\"')", {"public.Secrets"}),
        ("SELECT nextval('mydb.vault.keys')", {"vault.keys"}),
        ("SELECT nextval('secrets'::regclass)", {"public.secrets"}),
        ("SELECT nextval('secrets'::text::regclass)", {"public.secrets"}),
        ("SELECT pg_sequence_last_value('secrets')", {"public.secrets"}),
        ("SELECT to_regclass('vault.keys')", {"vault.keys"}),
        ("SELECT 'secrets'::regclass", {"public.secrets"}),
        ("SELECT CAST('vault.keys' AS pg_catalog.regclass)", {"vault.keys"}),
        ("SELECT regclass 'secrets'", {"public.secrets"}),
        ("SELECT pg_relation_size('secrets'::regclass)", {"public.secrets"}),
        ("SELECT 'pg_authid'::regclass", {"pg_catalog.pg_authid"}),
        ("SELECT get_raw_page('secrets', 0)", {"public.secrets"}),
        ("SELECT * FROM pgstattuple('vault.keys')", {"vault.keys"}),
        ("SELECT pg_prewarm(relation => 'secrets')", {"public.secrets"}),
        ("SELECT nextval(name) FROM seqs", {"*.*", "public.seqs"}),
        ("SELECT nextval('sec' || 'rets')", {"*.*"}),
        ("SELECT nextval('16384')", {"*.*"}),
        ("SELECT nextval(16384)", {"*.*"}),
        ("SELECT nextval('a.b.c.d')", {"*.*"}),
        ("SELECT nextval('')", {"*.*"}),
        ("SELECT nextval('\"unterminated')", {"*.*"}),
        ("SELECT relname::regclass FROM pg_class", {"pg_catalog.pg_class"}),
        ("SELECT 'x'::text, 'secrets'::regtype", set()),
    ],
)
def test_relations_named_in_strings(query: str, expected: set[str]) -> None:
    assert relations(query) == expected


def test_sequence_writers_need_update() -> None:
    assert analyze_sql_uncached("SELECT nextval('s')").statements[0].classes == {
        "select",
        "update",
    }
    assert analyze_sql_uncached("SELECT setval('s', 1)").statements[0].classes == {
        "select",
        "update",
    }
    assert analyze_sql_uncached("SELECT currval('s')").statements[0].classes == {"select"}


@pytest.mark.parametrize(
    "query",
    [
        "SELECT currval('secrets')",
        "SELECT setval('public.secrets', 1)",
        "SELECT 'secrets'::regclass",
        "SELECT nextval(x) FROM t",
    ],
)
def test_deny_rule_sees_relations_named_in_strings(query: str) -> None:
    assert decide(query) == ("deny", "no-secrets", "denied-by-rule")


def test_allow_rule_tables_cover_relations_named_in_strings() -> None:
    ps = policies(
        """
        rules:
          - id: reader
            effect: allow
            sql: {statements: [select], tables: ["public.*"]}
        """
    )

    def reason(query: str) -> str:
        return ps.decide(request("sql", {"query": query})).reason

    assert reason("SELECT currval('orders_id_seq')") == "allowed"
    assert reason("SELECT currval('vault.keys_seq')") == "default-deny"
    assert reason("SELECT currval(name) FROM public.seqs") == "default-deny"
    # nextval changes the sequence: a select-only rule does not allow it
    assert reason("SELECT nextval('orders_id_seq')") == "default-deny"


def test_relation_names_are_not_served_from_the_literal_caches() -> None:
    for name in ("orders_seq", "secrets", "vault.keys"):
        query = f"SELECT currval('{name}')"
        assert analyze_sql(query) == analyze_sql_uncached(query)
    assert relations("SELECT currval('secrets')") == {"public.secrets"}
    assert analyze_sql("SELECT currval('secrets')").statements[0].relations == {"public.secrets"}


# --- publications, foreign schemas, forbidden functions -------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("CREATE PUBLICATION p FOR ALL TABLES", {"*.*"}),
        ("CREATE PUBLICATION p FOR TABLES IN SCHEMA vault", {"vault.*"}),
        ("CREATE PUBLICATION p FOR TABLES IN SCHEMA CURRENT_SCHEMA", {"public.*"}),
        ("CREATE PUBLICATION p FOR TABLES IN SCHEMA a, b", {"a.*", "b.*"}),
        ("CREATE PUBLICATION p FOR TABLE t", {"public.t"}),
        ("ALTER PUBLICATION p ADD TABLES IN SCHEMA vault", {"vault.*"}),
        ("IMPORT FOREIGN SCHEMA remote FROM SERVER s INTO local", {"local.*"}),
        ("IMPORT FOREIGN SCHEMA remote EXCEPT (a) FROM SERVER s INTO local", {"local.*"}),
        ("IMPORT FOREIGN SCHEMA remote LIMIT TO (a, b) FROM SERVER s INTO loc", {"loc.a", "loc.b"}),
    ],
)
def test_publication_and_foreign_schema_relations(query: str, expected: set[str]) -> None:
    assert relations(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM xpath_table('id', 'doc', 'secrets', '/a', 'true') AS t(id int, a text)",
        "SELECT * FROM pg_hba_file_rules()",
        "SELECT * FROM pg_catalog.pg_ident_file_mappings()",
        "SELECT * FROM pg_show_all_file_settings()",
    ],
)
def test_query_runners_and_config_file_readers_are_forbidden(query: str) -> None:
    assert decide(query)[2] == "sql-forbidden"


# --- properties ----------------------------------------------------------------------------------


@SETTINGS
@given(st.text(max_size=80))
def test_relation_name_parts_never_crashes(text: str) -> None:
    parts = relation_name_parts(text)
    assert parts is None or (parts and all(p and len(p.encode()) <= 63 for p in parts))


UNQUOTED = st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=70)
QUOTED = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=70,
)


@st.composite
def spellings(draw: st.DrawFn) -> str:
    """A relation name of one to three parts, spelled as SQL would accept it as an identifier."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            parts.append(draw(UNQUOTED))
        else:
            parts.append('"' + draw(QUOTED).replace('"', '""') + '"')
    blanks = st.sampled_from(["", " ", "\t", "\n "])
    return "".join(
        (draw(blanks) + "." + draw(blanks) if i else "") + p for i, p in enumerate(parts)
    )


@SETTINGS
@given(spellings())
def test_string_names_resolve_like_the_sql_grammar(spelling: str) -> None:
    """``nextval('<name>')`` names the relation PostgreSQL's own grammar reads in
    ``SELECT * FROM <name>`` (identifier folding, quoting, truncation to 63 bytes)."""
    try:
        pg_parser.parse_sql_json(f"SELECT * FROM {spelling}")
    except pg_parser.ParseError:
        return  # a keyword, or a name the grammar refuses: nothing to compare with
    literal = "'" + spelling.replace("'", "''") + "'"
    from_string = relations(f"SELECT nextval({literal})")
    from_grammar = relations(f"SELECT * FROM {spelling}")
    assert from_string == from_grammar


@SETTINGS
@given(
    st.sampled_from(["public", "vault", "pg_catalog", "s1"]),
    st.sampled_from(["public.secrets", "vault.*", "*.keys", "p*.s*", "*.*"]),
    st.sampled_from(
        [
            "DROP SCHEMA {s}",
            "GRANT ALL ON ALL TABLES IN SCHEMA {s} TO x",
            "CREATE PUBLICATION p FOR TABLES IN SCHEMA {s}",
            "IMPORT FOREIGN SCHEMA r FROM SERVER f INTO {s}",
            "REINDEX SCHEMA {s}",
            "VACUUM",
            "DROP OWNED BY x",
            "CREATE PUBLICATION p FOR ALL TABLES",
        ]
    ),
)
def test_a_deny_rule_on_a_table_of_a_schema_catches_statements_on_all_of_it(
    schema: str, table_glob: str, template: str
) -> None:
    ps = policies(
        f"""
        rules:
          - id: all
            effect: allow
            sql: {{statements: ["*"], tables: ["*.*"]}}
          - id: deny
            effect: deny
            sql: {{statements: ["*"], tables: ["{table_glob}"]}}
        """
    )
    query = template.format(s=schema)
    decision = ps.decide(request("sql", {"query": query}))
    glob_schema = table_glob.partition(".")[0]
    schema_hit = (
        glob_schema == "*"
        or glob_schema == schema
        or (glob_schema == "p*" and schema.startswith("p"))
    )
    if "{s}" not in template or schema_hit:
        assert decision.decision == "deny"
    else:
        assert decision.decision == "allow"


# --- function bodies and their own search_path ---------------------------------------------------

FUNCTION = "CREATE FUNCTION f() RETURNS int LANGUAGE sql {} AS 'SELECT count(*) FROM keys'"


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        ("", {"*.*", "public.keys"}),  # parsed at each call, under the caller's path
        ("SET search_path = vault", {"vault.keys"}),
        ("SET search_path TO vault, public", {"vault.keys", "public.keys"}),
        ("SET search_path FROM CURRENT", {"public.keys"}),
        ("SET search_path = '$user'", {"*.*", "public.keys"}),
        ("SET search_path TO DEFAULT", {"*.*", "public.keys"}),
        ("SET work_mem = '1MB'", {"*.*", "public.keys"}),
    ],
)
def test_a_function_body_resolves_names_in_the_functions_own_search_path(
    clause: str, expected: set[str]
) -> None:
    assert relations(FUNCTION.format(clause)) == expected


def test_a_deny_rule_sees_a_function_body_run_in_its_schema() -> None:
    ps = policies(
        """
        rules:
          - id: ddl
            effect: allow
            sql: {statements: ["*"], tables: ["*.*"]}
          - id: no-vault
            effect: deny
            sql: {statements: ["*"], tables: ["vault.*"]}
        """
    )
    query = FUNCTION.format("SET search_path = vault")
    assert ps.decide(request("sql", {"query": query})).rule == "no-vault"


# --- setting names in any case -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "classes", "search_path"),
    [
        ('SET "ROLE" TO admin', {"role"}, None),
        ("SET \"Role\" = 'admin'", {"role"}, None),
        ('RESET "ROLE"', {"role"}, None),
        ('SET LOCAL "SESSION_AUTHORIZATION" = admin', {"role"}, None),
        ('SET "Search_Path" = vault', {"set"}, ("vault",)),
        ('SET SESSION "SEARCH_PATH" TO vault, public', {"set"}, ("vault", "public")),
        ('RESET "SEARCH_PATH"', {"set"}, ()),
        ('SET "search_path" TO DEFAULT', {"set"}, ()),
    ],
)
def test_setting_names_are_read_in_any_case(
    query: str, classes: set[str], search_path: tuple[str, ...] | None
) -> None:
    statement = analyze_sql_uncached(query).statements[0]
    assert (statement.classes, statement.search_path) == (classes, search_path)


def test_a_quoted_role_setting_needs_the_role_class() -> None:
    ps = policies(
        """
        rules:
          - id: settings
            effect: allow
            sql: {statements: [set]}
        """
    )
    assert ps.decide(request("sql", {"query": 'SET "ROLE" TO admin'})).reason == "default-deny"
    assert ps.decide(request("sql", {"query": "SET work_mem = '1MB'"})).reason == "allowed"


@SETTINGS
@given(st.sampled_from(["role", "search_path", "session_authorization"]), st.data())
def test_any_case_of_a_setting_name_is_the_setting(name: str, data: st.DataObject) -> None:
    flips = data.draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    spelled = "".join(c.upper() if f else c for c, f in zip(name, flips, strict=True))
    quoted = analyze_sql_uncached(f'SET "{spelled}" = x').statements[0]
    plain = analyze_sql_uncached(f"SET {name} = x").statements[0]
    assert (quoted.classes, quoted.search_path) == (plain.classes, plain.search_path)
