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


# --- file_fdw: a foreign table over a program or a server file is COPY PROGRAM / COPY file ------

FDW_SETUP = """
CREATE EXTENSION IF NOT EXISTS file_fdw;
CREATE SERVER IF NOT EXISTS files FOREIGN DATA WRAPPER file_fdw;
GRANT USAGE ON FOREIGN SERVER files TO app_user;
GRANT pg_execute_server_program, pg_read_server_files TO app_user;
"""
FDW_TEARDOWN = """
DROP FOREIGN TABLE IF EXISTS public.cmd, public.conf;
REVOKE pg_execute_server_program, pg_read_server_files FROM app_user;
DROP SERVER IF EXISTS files;
DROP EXTENSION IF EXISTS file_fdw;
"""


async def test_foreign_table_over_a_program_is_copy_program(broker: Broker) -> None:
    """``COPY ... PROGRAM`` is always refused, but a file_fdw foreign table with the option
    ``program`` (or ``filename``) ran the command (read the file) at each SELECT, under a rule
    that allows DDL and reads in public."""
    broker.pg.psql(FDW_SETUP, database=DB)
    broker.set_policy(DDL_PUBLIC)
    try:
        wire = await broker.session()
        frames = await wire.query(
            "CREATE FOREIGN TABLE cmd (line text) SERVER files "
            "OPTIONS (program 'echo ran-on-the-server')"
        )
        assert _codes(frames) == ["42501"], errors(frames)
        frames = await wire.query("SELECT * FROM cmd")
        assert "ran-on-the-server" not in str(rows(frames)), rows(frames)
        frames = await wire.query(
            "CREATE FOREIGN TABLE conf (line text) SERVER files OPTIONS (filename 'PG_VERSION')"
        )
        assert _codes(frames) == ["42501"], errors(frames)
        # One the administrator made, owned by the broker's role: its options cannot move.
        broker.pg.psql(
            "CREATE FOREIGN TABLE public.conf (line text) SERVER files "
            "OPTIONS (filename 'PG_VERSION'); ALTER FOREIGN TABLE public.conf OWNER TO app_user",
            database=DB,
        )
        frames = await wire.query(
            "ALTER FOREIGN TABLE conf OPTIONS (SET filename 'postmaster.opts')"
        )
        assert _codes(frames) == ["42501"], errors(frames)
        frames = await wire.query(
            "ALTER TABLE conf OPTIONS (DROP filename, ADD program 'echo ran-on-the-server')"
        )
        assert _codes(frames) == ["42501"], errors(frames)
        frames = await wire.query("SELECT * FROM conf")
        assert not errors(frames)
        assert "ran-on-the-server" not in str(rows(frames)), rows(frames)
        wire.close()
    finally:
        broker.pg.psql(FDW_TEARDOWN, database=DB)


# --- CASCADE reaches relations the statement does not name ---------------------------------------

CASCADE_SETUP = """
CREATE TABLE public.parents (id int PRIMARY KEY);
INSERT INTO public.parents VALUES (1);
CREATE TABLE vault.kids (id int REFERENCES public.parents (id), value text);
INSERT INTO vault.kids VALUES (1, 'kept');
CREATE MATERIALIZED VIEW vault.report AS SELECT count(*) AS n FROM public.parents;
GRANT ALL ON public.parents, vault.kids TO app_user;
ALTER TABLE public.parents OWNER TO app_user;
"""
CASCADE_TEARDOWN = """
DROP MATERIALIZED VIEW IF EXISTS vault.report;
DROP TABLE IF EXISTS vault.kids;
DROP TABLE IF EXISTS public.parents;
"""


async def test_truncate_cascade_empties_a_denied_table(broker: Broker) -> None:
    """``TRUNCATE parents CASCADE`` named only public.parents (truncate allowed there) and
    emptied vault.kids, whose foreign key references it (vault.* is denied)."""
    broker.pg.psql(CASCADE_SETUP, database=DB)
    broker.set_policy(DDL_PUBLIC)
    try:
        wire = await broker.session()
        frames = await wire.query("TRUNCATE parents CASCADE")
        assert _codes(frames) == ["42501"], errors(frames)
        frames = await wire.query("DROP TABLE parents CASCADE")
        assert _codes(frames) == ["42501"], errors(frames)
        wire.close()
        kids = broker.pg.psql("SELECT count(*) FROM vault.kids", database=DB)
        report = broker.pg.psql("SELECT to_regclass('vault.report')", database=DB)
        assert kids.strip() == "1", kids
        assert "report" in report, report
    finally:
        broker.pg.psql(CASCADE_TEARDOWN, database=DB)
