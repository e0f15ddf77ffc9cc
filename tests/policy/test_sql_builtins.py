"""Built-ins that take a relation by name without a cast (spec 5.3: every relation read must
match ``tables``).

PostgreSQL reads an untyped string literal as ``regclass`` when the parameter is ``regclass``
(``pg_relation_size('vault.items')``), and some built-ins look a ``text`` argument up as a
relation (``has_table_privilege('vault.items', 'select')``). Before the fix such calls named no
relation, so a deny rule on ``vault.*`` did not see them. The committed tables
(:mod:`tether.policy.sql_builtins`) are checked here against a real PostgreSQL's catalog.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser as pg_parser

from tests.pg import PostgresServer, PostgresUnavailable
from tether.policy.sql import SqlParseError, analyze_sql, analyze_sql_uncached
from tether.policy.sql_builtins import (
    EXTENSION_REGCLASS_FUNCTIONS,
    EXTENSION_TEXT_RELATION_FUNCTIONS,
    REGCLASS_FUNCTIONS,
    RELATION_PARAMETERS,
    TEXT_RELATION_FUNCTIONS,
    UNREADABLE_RELATION_FUNCTIONS,
)
from tether.policy.sql_tables import (
    FORBIDDEN_FUNCTION_PREFIXES,
    FORBIDDEN_FUNCTIONS,
    RELATION_NAME_FUNCTIONS,
)

from .conftest import policies, request
from .test_sql_review import UNQUOTED, spellings

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def relations(query: str, default_schema: str = "public") -> set[str]:
    return set(analyze_sql_uncached(query, default_schema).statements[0].relations)


# --- the committed tables match the real catalog -------------------------------------------

_BUILTIN = "pronamespace IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)"
_IN_EXTENSION = (
    "oid IN (SELECT objid FROM pg_depend WHERE classid = 'pg_proc'::regclass AND deptype = 'e')"
)


def _regclass_query(where: str) -> str:
    return f"""
SELECT proname || '|' || pg_get_function_arguments(oid) FROM pg_proc
WHERE {where} AND proargtypes::oid[] && ARRAY['regclass'::regtype, 'regclass[]'::regtype]::oid[]
"""


def _text_sweep(where: str, *, unprivileged: bool) -> str:
    """Every function matching ``where`` with a text or cstring argument, called with the name
    of a missing relation in each such position (other arguments: plain values of their types),
    in a transaction that is never committed (psql's exit rolls it back): the overloads that
    fail with "relation ... does not exist" read that argument as a relation name. Functions
    the policy forbids are never called; the built-ins are called as a role without privileges
    (the extensions' page inspectors need a superuser)."""
    role = "CREATE ROLE tether_sweep NOLOGIN; SET LOCAL ROLE tether_sweep;" if unprivileged else ""
    forbidden = ", ".join(f"'{name}'" for name in sorted(FORBIDDEN_FUNCTIONS))
    prefixes = "|".join(FORBIDDEN_FUNCTION_PREFIXES)
    return f"""
BEGIN;
{role}
SET LOCAL statement_timeout = '60s';
CREATE TEMP TABLE found (line text);
DO $sweep$
DECLARE
  f record; p int; i int; t oid; fill text; args text[];
  st text; msg text;
  simple oid[] := ARRAY['text', 'cstring', 'name', 'oid', 'integer', 'smallint', 'bigint',
    'boolean', '"char"', 'regclass', 'tid', 'double precision', 'numeric', 'regrole',
    'regproc']::regtype[]::oid[];
  strings oid[] := ARRAY['text', 'cstring']::regtype[]::oid[];
BEGIN
  FOR f IN SELECT oid, proname, proargtypes::oid[] AS types, pronargs FROM pg_proc
           WHERE {where} AND prokind = 'f' AND pronargs > 0
             AND proargtypes::oid[] && strings AND proargtypes::oid[] <@ simple
             AND proname NOT LIKE 'pg\\_sleep%' AND proname NOT IN ({forbidden})
             AND proname !~ '^({prefixes})'
  LOOP
    FOR p IN 0 .. f.pronargs - 1 LOOP
      CONTINUE WHEN NOT f.types[p] = ANY (strings);
      FOREACH fill IN ARRAY ARRAY['select', 'x'] LOOP
        args := '{{}}';
        FOR i IN 0 .. f.pronargs - 1 LOOP
          t := f.types[i];
          args := args || CASE
            WHEN i = p THEN '''zz_missing_rel''::' || t::regtype::text
            WHEN t = ANY (strings) THEN quote_literal(fill) || '::' || t::regtype::text
            WHEN t = 'name'::regtype THEN 'current_user::name'
            WHEN t = 'boolean'::regtype THEN 'false'
            WHEN t = 'tid'::regtype THEN '''(0,1)''::tid'
            WHEN t = 'regclass'::regtype THEN '''pg_class''::regclass'
            WHEN t = 'regrole'::regtype THEN 'current_user::regrole'
            WHEN t = 'regproc'::regtype THEN '''now''::regproc'
            WHEN t = '"char"'::regtype THEN '''r''::"char"'
            ELSE '1::' || t::regtype::text END;
        END LOOP;
        BEGIN
          EXECUTE format('SELECT %s(%s)', f.oid::regproc, array_to_string(args, ', '));
        EXCEPTION WHEN OTHERS THEN
          GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
          IF st = '42P01' AND msg LIKE '%"zz_missing_rel"%' THEN
            INSERT INTO found VALUES (
              f.proname || '|' || pg_get_function_arguments(f.oid) || '|' || p);
          END IF;
        END;
      END LOOP;
    END LOOP;
  END LOOP;
END
$sweep$;
SELECT DISTINCT line FROM found
"""


def _inputs(arguments: str) -> str:
    """``pg_get_function_arguments`` without the ``OUT`` arguments."""
    return ", ".join(a for a in arguments.split(", ") if not a.startswith("OUT "))


def _regclass_catalog(output: str) -> set[tuple[str, str]]:
    lines = (line.split("|") for line in output.splitlines() if line)
    return {(name, _inputs(arguments)) for name, arguments in lines}


def _text_catalog(output: str) -> set[tuple[str, str, int]]:
    lines = (line.split("|") for line in output.splitlines() if line)
    return {(name, _inputs(arguments), int(position)) for name, arguments, position in lines}


def _committed_regclass(table: dict[str, tuple[str, ...]]) -> set[tuple[str, str]]:
    return {(name, arguments) for name, overloads in table.items() for arguments in overloads}


def _committed_text(table: dict[str, dict[str, int]]) -> set[tuple[str, str, int]]:
    return {
        (n, arguments, p) for n, overloads in table.items() for arguments, p in overloads.items()
    }


@pytest.fixture(scope="module")
def contrib_db(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database with every extension the server ships installed."""
    name = f"t_contrib_{secrets.token_hex(4)}"
    pg_server.create_database(name)
    try:
        for extension in pg_server.psql("SELECT name FROM pg_available_extensions").split():
            pg_server.psql(f'CREATE EXTENSION IF NOT EXISTS "{extension}" CASCADE', name)
        yield name
    finally:
        pg_server.drop_database(name)


def test_regclass_functions_match_the_catalog(pg_server: PostgresServer) -> None:
    catalog = _regclass_catalog(pg_server.psql(_regclass_query(_BUILTIN)))
    assert catalog == _committed_regclass(REGCLASS_FUNCTIONS)


def test_text_relation_functions_match_the_catalog(pg_server: PostgresServer) -> None:
    found = _text_catalog(pg_server.psql(_text_sweep(_BUILTIN, unprivileged=True)))
    # to_regclass answers NULL for a missing relation rather than failing: added by hand.
    assert found == _committed_text(TEXT_RELATION_FUNCTIONS) - {("to_regclass", "text", 0)}
    assert pg_server.psql("SELECT to_regclass('zz_missing_rel') IS NULL") == "t"
    assert pg_server.psql("SELECT pg_get_function_arguments('to_regclass'::regproc)") == "text"


def test_extension_regclass_functions_match_the_catalog(
    pg_server: PostgresServer, contrib_db: str
) -> None:
    catalog = _regclass_catalog(pg_server.psql(_regclass_query(_IN_EXTENSION), contrib_db))
    assert catalog == _committed_regclass(EXTENSION_REGCLASS_FUNCTIONS)


def test_extension_text_relation_functions_match_the_catalog(
    pg_server: PostgresServer, contrib_db: str
) -> None:
    sweep = _text_sweep(_IN_EXTENSION, unprivileged=False)
    found = _text_catalog(pg_server.psql(sweep, contrib_db))
    # get_raw_page(text, text, bigint) checks its fork name before the relation: by hand.
    by_hand = ("get_raw_page", "text, text, bigint", 0)
    assert found == _committed_text(EXTENSION_TEXT_RELATION_FUNCTIONS) - {by_hand}
    with pytest.raises(PostgresUnavailable, match='relation "zz_missing_rel" does not exist'):
        pg_server.psql("SELECT get_raw_page('zz_missing_rel', 'main', 0)", contrib_db)


def test_the_unreadable_relation_function_takes_names_as_an_array(
    pg_server: PostgresServer,
) -> None:
    for name in UNREADABLE_RELATION_FUNCTIONS:
        arguments = pg_server.psql(f"SELECT pg_get_function_arguments('{name}'::regproc)")
        assert "object_names text[]" in arguments
    assert pg_server.psql(
        "SELECT objid::regclass FROM pg_get_object_address('table', '{pg_catalog,pg_class}', '{}')"
    ) == ("pg_class")


def test_untyped_literals_reach_the_server_as_relation_names(pg_server: PostgresServer) -> None:
    """What the analysis relies on: the server reads the untyped literal as a relation."""
    pg_server.psql("CREATE TABLE IF NOT EXISTS public.rel_probe (id serial)")
    try:
        out = pg_server.psql(
            "SELECT pg_relation_size('rel_probe') >= 0, pg_get_serial_sequence('rel_probe', 'id'),"
            " has_table_privilege('public.rel_probe', 'select'), pg_relation_filepath('rel_probe')"
            " IS NOT NULL"
        )
        assert out == "t|public.rel_probe_id_seq|t|t"
    finally:
        pg_server.psql("DROP TABLE public.rel_probe")


# --- the analysis, per family ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # sizes and storage
        ("SELECT pg_relation_size('secrets')", {"public.secrets"}),
        ("SELECT pg_relation_size('vault.keys', 'fsm')", {"vault.keys"}),
        ("SELECT pg_total_relation_size('vault.t')", {"vault.t"}),
        ("SELECT pg_table_size('t'), pg_indexes_size('u')", {"public.t", "public.u"}),
        (
            "SELECT pg_relation_filepath('vault.t'), pg_relation_filenode('t')",
            {"vault.t", "public.t"},
        ),
        # partitions
        ("SELECT * FROM pg_partition_tree('vault.p')", {"vault.p"}),
        ("SELECT * FROM pg_partition_tree(rootrelid => 'vault.p')", {"vault.p"}),
        ("SELECT * FROM pg_partition_ancestors(partitionid => 'p')", {"public.p"}),
        ("SELECT pg_partition_root('p')", {"public.p"}),
        # metadata
        ("SELECT pg_get_replica_identity_index('t')", {"public.t"}),
        ("SELECT pg_index_has_property('vault.i', 'clusterable')", {"vault.i"}),
        ("SELECT pg_index_column_has_property('i', 1, 'asc')", {"public.i"}),
        ("SELECT pg_relation_is_updatable('v', true)", {"public.v"}),
        ("SELECT pg_column_is_updatable('v', 1::int2, true)", {"public.v"}),
        ("SELECT pg_relation_is_publishable('t')", {"public.t"}),
        ("SELECT regclassout('t'), regclasssend('u')", {"public.t", "public.u"}),
        ("SELECT pg_nextoid('a', 'oid', 'b')", {"public.a", "public.b"}),
        ("SELECT pg_extension_config_dump('t', '')", {"public.t"}),
        # view definitions, sequences of columns, row security, tuple ids
        ("SELECT pg_get_viewdef('vault.v')", {"vault.v"}),
        ("SELECT pg_get_viewdef('v', true)", {"public.v"}),
        ("SELECT pg_get_serial_sequence('vault.t', 'id')", {"vault.t"}),
        ("SELECT row_security_active('t')", {"public.t"}),
        ("SELECT currtid2('t', '(0,1)')", {"public.t"}),
        # privileges: the relation's position depends on the arity
        ("SELECT has_table_privilege('vault.t', 'select')", {"vault.t"}),
        ("SELECT has_table_privilege('bob', 'vault.t', 'select')", {"vault.t"}),
        ("SELECT has_sequence_privilege('s', 'usage')", {"public.s"}),
        ("SELECT has_sequence_privilege('bob', 's', 'usage')", {"public.s"}),
        ("SELECT has_any_column_privilege('t', 'select')", {"public.t"}),
        ("SELECT has_any_column_privilege('bob', 't', 'select')", {"public.t"}),
        ("SELECT has_column_privilege('t', 'c', 'select')", {"public.t"}),
        ("SELECT has_column_privilege('t', 1::int2, 'select')", {"public.t"}),
        ("SELECT has_column_privilege('bob', 'vault.t', 'c', 'select')", {"vault.t"}),
        # the text-to-regclass conversions in function form
        ("SELECT regclass('vault.k')", {"vault.k"}),
        ("SELECT pg_catalog.regclassin('k')", {"public.k"}),
        ("SELECT to_regclass('vault.k')", {"vault.k"}),
        # spelling: as regclass input reads it
        ('SELECT pg_relation_size(\'"Vault"."Keys"\')', {"Vault.Keys"}),
        ("SELECT pg_relation_size(' Vault . Keys ')", {"vault.keys"}),
        ("SELECT pg_relation_size('db.vault.keys')", {"vault.keys"}),
        ("SELECT pg_relation_size('pg_authid')", {"pg_catalog.pg_authid"}),
        ("SELECT pg_relation_size('t'::text)", {"public.t"}),
        # extensions shipped with PostgreSQL, matched in any schema
        ("SELECT * FROM bt_page_items('vault.i', 1)", {"vault.i"}),
        ("SELECT * FROM bt_page_items(relname => 'vault.i', blkno => 1)", {"vault.i"}),
        ("SELECT * FROM bt_metap('i'), bt_page_stats('j', 1)", {"public.i", "public.j"}),
        ("SELECT * FROM brin_page_items('\\x00'::bytea, 'vault.i')", {"vault.i"}),
        ("SELECT * FROM gist_page_items(page => '\\x00', index_oid => 'i')", {"public.i"}),
        ("SELECT * FROM ext.gist_page_items('\\x00', $1)", {"*.*"}),
        ("SELECT * FROM hash_bitmap_info('i', 1)", {"public.i"}),
        ("SELECT * FROM heap_page_item_attrs(get_raw_page('t', 0), 't')", {"public.t"}),
        (
            "SELECT * FROM heap_page_item_attrs(get_raw_page('t', 0), 'vault.t', true)",
            {"public.t", "vault.t"},
        ),
        ("SELECT * FROM verify_heapam('vault.t')", {"vault.t"}),
        ("SELECT * FROM verify_heapam('vault.t', true, false, 'none', 0, 1)", {"vault.t"}),
        ("SELECT pg_prewarm('t', 'buffer')", {"public.t"}),
        ("SELECT pg_prewarm('t', mode => 'buffer')", {"public.t"}),
        ("SELECT * FROM pg_visibility('vault.t', 0)", {"vault.t"}),
        ("SELECT * FROM pgstatindex('vault.i')", {"vault.i"}),
        # values that are not a name: any relation
        ("SELECT pg_relation_size(16384)", {"*.*"}),
        ("SELECT pg_relation_size('16384')", {"*.*"}),
        ("SELECT pg_relation_size($1)", {"*.*"}),
        ("SELECT pg_relation_size('a' || 'b')", {"*.*"}),
        (
            "SELECT relname, pg_total_relation_size(oid) FROM pg_class",
            {"*.*", "pg_catalog.pg_class"},
        ),
        ("SELECT pg_get_viewdef(16384)", {"*.*"}),
        ("SELECT pg_get_viewdef(16384, 80)", {"*.*"}),
        ("SELECT has_table_privilege('bob', 16384, 'select')", {"*.*"}),
        ("SELECT has_table_privilege(16384, 'select')", {"*.*"}),
        ("SELECT row_security_active(16384)", {"*.*"}),
        ("SELECT pg_relation_size('a.b.c.d')", {"*.*"}),
        ("SELECT pg_get_object_address('table', '{vault,items}', '{}')", {"*.*"}),
        # arguments that name no relation, functions that take none
        ("SELECT pg_relation_size('t', 'vault.x')", {"public.t"}),
        ("SELECT has_table_privilege('bob', 't', 'vault.x')", {"public.t"}),
        ("SELECT pg_index_column_has_property('i', 1, 'vault.x')", {"public.i"}),
        ("SELECT lower('vault.x'), length('secrets')", set()),
        ("SELECT pg_partition_tree(other => 'x')", {"public.x"}),  # unknown name: counted
        ("SELECT pg_relation_size('a', 'b', 'c')", {"public.a"}),  # no such arity: all overloads
    ],
)
def test_relations_named_by_builtin_arguments(query: str, expected: set[str]) -> None:
    assert relations(query) == expected


def test_unqualified_names_resolve_to_the_default_schema() -> None:
    assert relations("SELECT pg_relation_size('t')", "app") == {"app.t"}
    assert relations("SELECT has_table_privilege('t', 'select')", "app") == {"app.t"}
    assert relations("SELECT pg_relation_size('pg_class')", "app") == {"pg_catalog.pg_class"}


def test_calls_in_a_function_body_are_seen() -> None:
    query = (
        "CREATE FUNCTION f() RETURNS bigint LANGUAGE sql SET search_path = vault "
        "AS 'SELECT pg_relation_size(''keys'')'"
    )
    assert relations(query) == {"vault.keys"}


def test_size_and_metadata_reads_need_only_their_statements_class() -> None:
    assert analyze_sql_uncached("SELECT pg_relation_size('t')").statements[0].classes == {"select"}
    update = analyze_sql_uncached("UPDATE t SET n = pg_relation_size('vault.x')").statements[0]
    assert (update.classes, update.relations) == ({"update"}, {"public.t", "vault.x"})


def test_relation_names_are_not_served_from_the_literal_caches() -> None:
    for name in ("orders", "secrets", "vault.keys", "16384"):
        for template in ("SELECT pg_relation_size('{}')", "SELECT has_table_privilege('{}', 'x')"):
            query = template.format(name)
            assert analyze_sql(query) == analyze_sql_uncached(query)
    assert analyze_sql("SELECT pg_table_size('vault.k')").statements[0].relations == {"vault.k"}


DENY_VAULT = policies(
    """
    rules:
      - id: reader
        effect: allow
        sql: {statements: [select], tables: ["*.*"]}
      - id: no-vault
        effect: deny
        sql: {statements: ["*"], tables: ["vault.*"]}
    """
)


def decide(query: str) -> tuple[str, str | None]:
    d = DENY_VAULT.decide(request("sql", {"query": query}))
    return d.decision, d.rule


@pytest.mark.parametrize(
    "query",
    [
        "SELECT pg_relation_size('vault.items')",
        "SELECT pg_total_relation_size('VAULT.items')",
        "SELECT has_table_privilege('vault.items', 'select')",
        "SELECT pg_get_viewdef('vault.v')",
        "SELECT * FROM pg_partition_tree('vault.p')",
        "SELECT pg_relation_size(oid) FROM pg_class",
        "SELECT pg_get_object_address('table', '{vault,items}', '{}')",
    ],
)
def test_a_deny_rule_sees_relations_named_by_builtin_arguments(query: str) -> None:
    assert decide(query) == ("deny", "no-vault")


def test_other_relations_stay_allowed() -> None:
    assert decide("SELECT pg_relation_size('public.items')") == ("allow", "reader")
    assert decide("SELECT has_table_privilege('items', 'select')") == ("allow", "reader")


def test_an_allow_rules_tables_must_cover_them() -> None:
    ps = policies(
        """
        rules:
          - id: public-reader
            effect: allow
            sql: {statements: [select], tables: ["public.*", "pg_catalog.*"]}
        """
    )

    def reason(query: str) -> str:
        return ps.decide(request("sql", {"query": query})).reason

    assert reason("SELECT pg_relation_size('items')") == "allowed"
    assert reason("SELECT pg_relation_size('vault.items')") == "default-deny"
    assert reason("SELECT relname, pg_relation_size(oid) FROM pg_class") == "default-deny"


def test_every_tabled_function_is_known_by_its_lower_case_name() -> None:
    assert all(name == name.lower() for name in RELATION_PARAMETERS)
    assert {"pg_relation_size", "has_table_privilege", "regclassin"} <= set(RELATION_PARAMETERS)


# --- properties --------------------------------------------------------------------------------


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_NOT_NAMES = st.sampled_from(
    ["16384", "$1", "relid", "'a' || 'b'", "NULL", "(SELECT 'x')", "'16384'", "c.oid", "'1'::oid"]
)
_FILLERS = st.one_of(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        max_size=12,
    ).map(_literal),
    st.integers(-5, 99999).map(str),
    _NOT_NAMES,
    st.sampled_from(["true", "1::int2", "'(0,1)'::tid"]),
)
_CALLS = [
    (name, overload)
    for name, overloads in sorted(RELATION_PARAMETERS.items())
    for overload in overloads
]


@st.composite
def _calls(draw: st.DrawFn) -> tuple[str, list[str | None]]:
    """A call of a tabled function, each relation position holding either a name spelling or
    something that is not a name (``None`` in the list), the others anything."""
    name, overload = draw(st.sampled_from(_CALLS))
    args: list[str] = []
    names: list[str | None] = []
    for position in range(draw(st.integers(overload.least, overload.most))):
        if position in overload.positions:
            if draw(st.booleans()):
                spelling = draw(spellings())
                args.append(_literal(spelling))
                names.append(spelling)
            else:
                args.append(draw(_NOT_NAMES))
                names.append(None)
        else:
            args.append(draw(_FILLERS))
    schema = draw(st.sampled_from(["", "pg_catalog.", "Pg_Catalog.", "other."]))
    return f"SELECT {schema}{name}({', '.join(args)}) FROM c", names


@SETTINGS
@given(_calls())
def test_calls_never_report_fewer_relations_than_they_name(
    call: tuple[str, list[str | None]],
) -> None:
    """Every relation a literal names is reported (as the grammar reads the same name after
    ``FROM``), and a position holding anything else reports ``*.*``."""
    query, names = call
    reported = relations(query)
    assert "public.c" in reported
    for spelling in names:
        if spelling is None:
            assert "*.*" in reported
            continue
        try:
            expected = relations(f"SELECT * FROM {spelling}")
        except SqlParseError:  # a keyword or a name the grammar refuses: regclass still reads it
            assert reported - {"public.c"}
            continue
        assert expected <= reported or "*.*" in reported


@SETTINGS
@given(_calls())
def test_a_deny_rule_on_a_named_relation_is_never_turned_into_an_allow(
    call: tuple[str, list[str | None]],
) -> None:
    query, names = call
    for spelling in names:
        if spelling is None:
            continue
        try:
            named = relations(f"SELECT * FROM {spelling}")
        except SqlParseError:
            continue
        glob = _glob_of(next(iter(named)))
        ps = policies(
            f"""
            rules:
              - id: all
                effect: allow
                sql: {{statements: ["*"], tables: ["*.*"]}}
              - id: deny
                effect: deny
                sql: {{statements: ["*"], tables: [{_yaml(glob)}]}}
            """
        )
        assert ps.decide(request("sql", {"query": query})).decision == "deny"


def _glob_of(relation: str) -> str:
    """A table glob matching ``relation`` (a reported ``schema.table``, parts quoted when they
    hold a dot, quote or star): each character that is not a letter, digit or ``_`` becomes
    ``*``, the dot between the two parts kept."""
    split = re.fullmatch(r'((?:"(?:[^"]|"")*"|[^".])*)\.(.*)', relation, re.DOTALL)
    assert split is not None
    parts = split.groups()
    return ".".join(re.sub(r"[^A-Za-z0-9_]", "*", part) for part in parts)


def _yaml(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@SETTINGS
@given(
    st.sampled_from(sorted(RELATION_PARAMETERS) + sorted(UNREADABLE_RELATION_FUNCTIONS)),
    st.lists(
        st.one_of(_FILLERS, st.tuples(UNQUOTED, _FILLERS).map(lambda p: f"{p[0]} => {p[1]}")),
        max_size=5,
    ),
)
def test_any_call_of_a_tabled_function_is_analysed_without_crashing(
    name: str, args: list[str]
) -> None:
    query = f"SELECT {name}({', '.join(args)})"
    try:
        pg_parser.parse_sql_json(query)
    except pg_parser.ParseError:
        return  # positional after named, a keyword as a name: the parser refuses it first
    statement = analyze_sql(query).statements[0]
    assert statement.classes <= {"select", "update"}  # nextval and setval also write
    assert all(isinstance(r, str) and r for r in statement.relations)


def test_the_hand_written_list_is_covered_by_the_catalogs_overloads() -> None:
    """Every function of ``RELATION_NAME_FUNCTIONS`` (its first argument names a relation) is
    in the catalog-derived tables with a relation at position 0 in every overload, so using
    the tables for them loses no relation."""
    for name in RELATION_NAME_FUNCTIONS:
        assert name in RELATION_PARAMETERS
        assert all(0 in overload.positions for overload in RELATION_PARAMETERS[name])
