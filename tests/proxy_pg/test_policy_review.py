"""SQL defects found in the policy engine's adversarial review, end to end: real broker, real
PostgreSQL server (the fixtures' policy allows ``select`` and ``set`` on ``public.*`` and
denies ``public.secrets`` and ``vault.*``).

* PostgreSQL looks setting names up in any case: ``SET "Search_Path" = vault`` moves the
  session to ``vault``, but the policy did not read it as a ``search_path`` change, so the
  broker kept deciding unqualified names under ``public`` and ``SELECT * FROM items`` read
  ``vault.items``.
* A role's own ``search_path`` (``ALTER ROLE app_user SET search_path = vault``) moved the
  server's unqualified names from the first query while the broker decided them under the
  target's default schema: ``SELECT * FROM items`` read ``vault.items``. The broker's login
  now sets ``search_path`` to the default schema.
* Relations named in strings were not relations: ``SELECT 'secrets'::regclass`` and
  ``currval('secrets')`` reached a denied table.
"""

from __future__ import annotations

import pytest

from tests.pg import PostgresServer

from .conftest import DATABASE, Broker
from .wire import errors, rows


@pytest.mark.parametrize("setting", ['"Search_Path"', '"SEARCH_PATH"', "Search_Path"])
async def test_a_search_path_set_under_any_spelling_is_tracked(
    broker: Broker, setting: str
) -> None:
    wire = await broker.session()
    assert not errors(await wire.query(f"SET {setting} = vault"))
    frames = await wire.query("SELECT value FROM items")
    assert [e.sqlstate for e in errors(frames)] == ["42501"]
    assert "vaulted" not in str(rows(frames))
    wire.close()


async def test_a_quoted_search_path_in_the_same_query_is_tracked(broker: Broker) -> None:
    wire = await broker.session()
    frames = await wire.query('SET "Search_Path" = vault; SELECT value FROM items')
    assert [e.sqlstate for e in errors(frames)] == ["42501"]
    assert "vaulted" not in str(rows(frames))
    wire.close()


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 'secrets'::regclass",
        "SELECT 'vault.items'::regclass::oid",
        "SELECT currval('secrets')",
        "SELECT pg_relation_size('public.secrets'::regclass)",
    ],
)
async def test_relations_named_in_strings_are_checked(broker: Broker, query: str) -> None:
    wire = await broker.session()
    frames = await wire.query(query)
    assert [e.sqlstate for e in errors(frames)] == ["42501"]  # the broker's refusal
    wire.close()


async def test_a_relation_named_in_a_string_that_is_allowed_still_works(broker: Broker) -> None:
    wire = await broker.session()
    assert rows(await wire.query("SELECT 'items'::regclass::text")) == [["items"]]
    wire.close()


@pytest.mark.parametrize(
    "setting",
    ["ALTER ROLE app_user SET search_path = vault",
     f"ALTER ROLE app_user IN DATABASE {DATABASE} SET search_path = vault, public",
     f"ALTER DATABASE {DATABASE} SET search_path = vault"],
)  # fmt: skip
async def test_a_role_or_database_search_path_does_not_move_unqualified_names(
    broker: Broker, app_db: PostgresServer, setting: str
) -> None:
    app_db.psql(setting)
    try:
        wire = await broker.session()
        frames = await wire.query("SELECT * FROM items ORDER BY id")
        assert not errors(frames)
        assert len(rows(frames)) == 10 and "vaulted" not in str(rows(frames))
        assert rows(await wire.query("SHOW search_path")) == [['"public"']]
        assert not errors(await wire.query("SET search_path = public"))
        assert len(rows(await wire.query("SELECT * FROM items"))) == 10
        frames = await wire.query("RESET search_path; SELECT * FROM items")
        assert not errors(frames) and "vaulted" not in str(rows(frames))
        wire.close()
    finally:
        app_db.psql("ALTER ROLE app_user RESET ALL")
        app_db.psql(f"ALTER ROLE app_user IN DATABASE {DATABASE} RESET ALL")
        app_db.psql(f"ALTER DATABASE {DATABASE} RESET ALL")


# Built-ins taking a relation by name without a cast: PostgreSQL reads the untyped literal as a
# ``regclass`` (or looks the text up as a relation), so these reached vault.items and
# public.secrets under a deny rule on them before the analysis knew those functions.
@pytest.mark.parametrize(
    "query",
    [
        "SELECT pg_relation_size('vault.items')",
        "SELECT pg_total_relation_size('secrets')",
        "SELECT has_table_privilege('vault.items', 'select')",
        "SELECT pg_relation_filepath('vault.items')",
        "SELECT pg_relation_size(oid) FROM pg_class WHERE relname = 'items'",
    ],
)
async def test_relations_named_by_builtin_arguments_are_checked(broker: Broker, query: str) -> None:
    wire = await broker.session()
    frames = await wire.query(query)
    assert [e.sqlstate for e in errors(frames)] == ["42501"]  # the broker's refusal
    assert not rows(frames)
    wire.close()


async def test_relations_named_by_builtin_arguments_are_allowed_where_the_policy_allows(
    broker: Broker,
) -> None:
    wire = await broker.session()
    frames = await wire.query(
        "SELECT pg_relation_size('items') > 0, has_table_privilege('items', 'select')"
    )
    assert rows(frames) == [["t", "t"]]
    broker.set_policy(
        """
        rules:
          - id: read-all
            effect: allow
            agents: [bot]
            sql: {statements: [select], tables: ["*.*"]}
        """
    )
    frames = await wire.query("SELECT pg_relation_size('vault.items') > 0")
    assert rows(frames) == [["t"]]  # the server read the literal as the relation vault.items
    wire.close()
