"""Probes of the s19 red-team review of the PostgreSQL broker (real broker, real PostgreSQL 15),
each asserting the safe outcome; each one failed before its fix."""

from __future__ import annotations

from .conftest import Broker
from .wire import errors, rows

DB = "broker_app"

DDL_PUBLIC = """
rules:
  - id: agent-public
    effect: allow
    agents: [bot]
    sql: {statements: [select, set, ddl, truncate, insert], tables: ["public.*"]}
  - id: no-secrets
    effect: deny
    sql: {statements: ["*"], tables: ["public.secrets", "vault.*"]}
"""


def _codes(frames: list[tuple[int, bytes, bytes]]) -> list[str]:
    return [e.sqlstate for e in errors(frames)]


# --- a SQL function's string body runs under the caller's search path -------------------------


async def test_sql_function_body_read_under_a_later_search_path(broker: Broker) -> None:
    """The body ``SELECT t::text FROM items t`` was checked as public.items when the function
    was made; a later ``SET search_path = vault`` made each call read vault.items."""
    broker.set_policy(DDL_PUBLIC)
    try:
        wire = await broker.session()
        frames = await wire.query(
            "CREATE FUNCTION peek() RETURNS SETOF text LANGUAGE sql "
            "AS 'SELECT t::text FROM items t'"
        )
        assert _codes(frames) == ["42501"]  # an unqualified name in it may be any relation
        assert not errors(await wire.query("SET search_path = vault, public"))
        frames = await wire.query("SELECT public.peek()")
        assert "vaulted" not in str(rows(frames)), rows(frames)
        wire.close()
    finally:
        broker.pg.psql("DROP FUNCTION IF EXISTS public.peek()", database=DB)


async def test_alter_function_moves_its_body_to_another_schema(broker: Broker) -> None:
    """A body pinned to ``SET search_path = public`` was checked there; ``ALTER FUNCTION ...
    SET search_path = vault`` (a DDL naming no relation) made it read vault.items."""
    broker.set_policy(DDL_PUBLIC)
    try:
        wire = await broker.session()
        frames = await wire.query(
            "CREATE FUNCTION peek() RETURNS SETOF text LANGUAGE sql SET search_path = public "
            "AS 'SELECT t::text FROM items t'"
        )
        assert not errors(frames)  # pinned: its names are public's
        frames = await wire.query("ALTER FUNCTION peek() SET search_path = vault")
        assert _codes(frames) == ["42501"]
        frames = await wire.query("SELECT peek()")
        assert "vaulted" not in str(rows(frames)), rows(frames)
        wire.close()
    finally:
        broker.pg.psql("DROP FUNCTION IF EXISTS public.peek()", database=DB)
