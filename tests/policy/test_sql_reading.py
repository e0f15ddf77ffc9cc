"""What the SQL analysis must see so that the server reads a statement as the policy did.

* ``SET client_encoding`` / ``SET NAMES`` / ``SET standard_conforming_strings`` to a value
  under which PostgreSQL reads later text otherwise than the parser (SJIS swallows a
  backslash, strings off makes ``\\'`` an escaped quote) are ``sql-forbidden``.
* A ``SET`` inside a function body, and any write to ``pg_settings`` (its rules call
  ``set_config``), change settings the broker would not see: forbidden.
* An unqualified ``pg_`` name that is no catalog relation is found on the search path:
  reported under both ``pg_catalog`` and the path's schema.
* ``CREATE SCHEMA`` runs its elements with the new schema in front of the path: what they
  read unqualified is reported under both.
* A role change is a fact of the statement (the broker widens its schema set with it).

The catalog list is checked against a real PostgreSQL 15.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pg import PostgresServer
from tether.policy.sql import analyze_sql_uncached
from tether.policy.sql_catalog import CATALOG_RELATIONS

from .conftest import policies, request

FORBIDDEN = "sql-forbidden"


def statement(query: str, schema: str = "public"):  # type: ignore[no-untyped-def]
    return analyze_sql_uncached(query, schema).statements[0]


@pytest.mark.parametrize(
    "query",
    [
        "SET client_encoding = 'SJIS'",
        "SET NAMES 'BIG5'",
        "SET client_encoding TO gbk",
        "SET LOCAL client_encoding = 'LATIN1'",
        "SET standard_conforming_strings = off",
        "SET standard_conforming_strings = 0",
        "SET LOCAL standard_conforming_strings TO false",
        'SET "Standard_Conforming_Strings" = off',
        "SET client_encoding = 'UTF8', 'SJIS'",
    ],
)
def test_a_setting_that_changes_how_text_reads_is_forbidden(query: str) -> None:
    assert statement(query).forbidden is not None, query


@pytest.mark.parametrize(
    "query",
    [
        "SET client_encoding = 'UTF8'",
        "SET NAMES 'utf-8'",
        "SET client_encoding = unicode",
        "SET standard_conforming_strings = on",
        "SET standard_conforming_strings = true",
        "RESET client_encoding",
        "SET client_encoding TO DEFAULT",
        "RESET standard_conforming_strings",
        "RESET ALL",
        "SET search_path = app, public",
        "SET statement_timeout = 5000",
    ],
)
def test_settings_that_keep_the_reading_stay_allowed(query: str) -> None:
    assert statement(query).forbidden is None, query


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["client_encoding", "standard_conforming_strings", "NAMES"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="'\x00"), max_size=12),
)
def test_only_the_parsers_own_reading_is_ever_set(name: str, value: str) -> None:
    """For any value: the SET is forbidden unless PostgreSQL would then read text as the
    parser does (UTF-8, standard strings), never a crash."""
    query = f"SET NAMES '{value}'" if name == "NAMES" else f"SET {name} = '{value}'"
    facts = statement(query)
    kept = value.strip().lower() in (
        {"utf8", "utf-8", "utf_8", "unicode"} if name != "standard_conforming_strings"
        else {"on", "true", "yes", "1"}
    )  # fmt: skip
    assert (facts.forbidden is None) == kept, (query, facts.forbidden)


@pytest.mark.parametrize(
    "query",
    [
        "CREATE FUNCTION public.hop() RETURNS int LANGUAGE sql AS $$ SET search_path = vault; "
        "SELECT 1 $$",
        "CREATE PROCEDURE public.p() LANGUAGE sql AS $$ SET ROLE admin $$",
        "UPDATE pg_settings SET setting = 'vault' WHERE name = 'search_path'",
        "UPDATE pg_catalog.pg_settings SET setting = 'off' "
        "WHERE name = 'standard_conforming_strings'",
        "WITH x AS (UPDATE pg_settings SET setting = 'a' WHERE name = 'search_path' RETURNING 1) "
        "SELECT * FROM x",
    ],
)
def test_settings_changed_out_of_the_brokers_sight_are_forbidden(query: str) -> None:
    assert statement(query).forbidden is not None, query


def test_a_function_may_still_set_its_own_path() -> None:
    """``CREATE FUNCTION ... SET search_path`` holds only while the function runs."""
    query = (
        "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql SET search_path = public "
        "AS $$ SELECT 1 $$"
    )
    assert statement(query).forbidden is None
    assert statement("SELECT name, setting FROM pg_settings").forbidden is None


def test_pg_names_outside_the_catalog_are_reported_on_the_path_too() -> None:
    assert statement("SELECT * FROM pg_class").relations == {"pg_catalog.pg_class"}
    assert statement("SELECT * FROM pg_keys", "vault").relations == {
        "pg_catalog.pg_keys", "vault.pg_keys"
    }  # fmt: skip
    assert statement("SELECT * FROM pg_stat_statements").relations == {
        "pg_catalog.pg_stat_statements", "public.pg_stat_statements"
    }  # fmt: skip
    assert statement("SELECT 'pg_keys'::regclass").relations == {
        "pg_catalog.pg_keys", "public.pg_keys"
    }  # fmt: skip


DENY_VAULT = """
rules:
  - id: read
    effect: allow
    sql: {statements: [select], tables: ["*.*"]}
  - id: no-vault
    effect: deny
    sql: {statements: ["*"], tables: ["vault.*"]}
"""


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"pg_[a-z_]{1,20}", fullmatch=True))
def test_a_deny_on_the_path_meets_every_pg_name(name: str) -> None:
    """Whatever a ``pg_`` name is, a deny of the schema it may be found in meets it, unless
    the catalog has it (the catalog is searched first)."""
    query = {"query": f"SELECT * FROM {name}"}
    decision = policies(DENY_VAULT).decide(request("sql", query), default_schema="vault")
    expected = "allow" if name in CATALOG_RELATIONS else "deny"
    assert decision.decision == expected, (name, decision)


def test_create_schema_elements_read_the_old_path_too() -> None:
    facts = statement("CREATE SCHEMA agent_x CREATE VIEW v AS SELECT * FROM secrets")
    assert facts.relations == {"agent_x.v", "agent_x.secrets", "public.secrets"}
    created = statement("CREATE SCHEMA s CREATE TABLE t (a int) CREATE VIEW v AS SELECT * FROM t")
    assert created.relations == {"s.t", "s.v"}  # what the statement creates is the new schema's


@pytest.mark.parametrize(
    ("query", "role"),
    [
        ("SET ROLE app_reader", "app_reader"),
        ("SET SESSION AUTHORIZATION bob", "bob"),
        ("SET ROLE NONE", ""),
        ("RESET ROLE", ""),
        ("RESET ALL", ""),
        ("DISCARD ALL", ""),
        ("SET search_path = a", None),
        ("SELECT 1", None),
    ],
)
def test_a_role_change_is_a_fact_of_the_statement(query: str, role: str | None) -> None:
    assert statement(query).role == role


def test_the_catalog_list_is_postgresql_15s(pg_server: PostgresServer) -> None:
    listed = pg_server.psql(
        "SELECT relname FROM pg_class WHERE relnamespace = 'pg_catalog'::regnamespace "
        "AND relkind IN ('r', 'v', 'm', 'p', 'f', 'S')"
    ).split()
    assert set(listed) == CATALOG_RELATIONS
