"""Probes of a red-team review of the PostgreSQL broker (real broker, real PostgreSQL 15),
each asserting the safe outcome; each one failed before its fix: settings that change how
the server reads text (pipelined behind them), names the server skips after an error, pg_
names outside the catalog, pg_settings and function-body SETs, CREATE SCHEMA elements, SET
ROLE, and a Sync held behind the broker's own query while the server skipped to it.
"""

from __future__ import annotations

import asyncio

import pytest

from tether.proxy.pg import codec as c
from tether.proxy.pg.backend import T_READY

from .conftest import Broker
from .wire import errors, rows


def _ext(sql: str) -> bytes:
    return (
        c.Parse("", sql).encode() + c.Bind("", "").encode() + c.Describe("P", "").encode()
        + c.Execute("").encode()
    )  # fmt: skip


async def _secrets_count(broker: Broker) -> str:
    return broker.pg.psql("SELECT count(*) FROM secrets", database="broker_app").strip()


# --- F1: standard_conforming_strings off, pipelined -------------------------------------------

# Under standard_conforming_strings=on (what the policy's parser assumes): a SELECT of
# public.items, the rest a comment. Under off: the string runs to the second quote and the
# statement reads public.secrets (denied by the rule no-secrets).
SCS_READ = "SELECT 'x\\' AS a FROM items --' AS a, value FROM secrets"


async def test_scs_off_pipelined_read_of_a_denied_table(broker: Broker) -> None:
    wire = await broker.session()
    wire.send(_ext("SET standard_conforming_strings = off") + _ext(SCS_READ) + c.Sync().encode())
    frames = await wire.until({T_READY}, timeout=5)
    assert "hunter2" not in str(rows(frames)), rows(frames)
    wire.close()


# Policy's view: one INSERT into public.items (allowed), the rest a comment. Server's view
# (off): INSERT ...; DELETE FROM secrets; -- comment.
SCS_WRITE = "INSERT INTO items VALUES (990, 'a\\') -- '); DELETE FROM secrets; --"


async def test_scs_off_pipelined_write_to_a_denied_table(broker: Broker) -> None:
    wire = await broker.session()
    wire.send(
        _ext("SET standard_conforming_strings = off") + c.Query(SCS_WRITE).encode()
        + c.Sync().encode()
    )  # fmt: skip
    frames = await wire.until({T_READY}, timeout=5)
    assert [e.sqlstate for e in errors(frames)] == ["42501"]  # the SET, refused
    await asyncio.sleep(0.5)
    count = broker.pg.psql("SELECT count(*) FROM secrets", database="broker_app")
    broker.pg.psql("DELETE FROM items WHERE id = 990", database="broker_app")
    broker.pg.psql(
        "INSERT INTO secrets SELECT 1, 'hunter2' WHERE NOT EXISTS (SELECT 1 FROM secrets)",
        database="broker_app",
    )
    assert "1" in count, count
    wire.close()


# --- F1b: client_encoding SJIS, pipelined ------------------------------------------------------

# UTF-8 (the policy's reading): U+0081 then an escaped quote, the string runs on, a read of
# public.items. SJIS (the server's reading after SET client_encoding): the bytes C2 81 5C are
# "ﾂ" and "―" (0x81 0x5C), so the backslash is gone, the quote ends the string, and the
# statement reads public.secrets.
SJIS_READ = "SELECT E'\u0081\\' AS a, value FROM secrets --' AS a FROM items"


async def test_sjis_client_encoding_pipelined_read_of_a_denied_table(broker: Broker) -> None:
    wire = await broker.session()
    wire.send(_ext("SET client_encoding = 'SJIS'") + _ext(SJIS_READ) + c.Sync().encode())
    frames = await wire.until({T_READY}, timeout=5)
    assert "hunter2" not in str(rows(frames)), rows(frames)
    wire.close()


async def test_sjis_reported_during_the_brokers_search_path_query_is_not_seen(
    broker: Broker,
) -> None:
    """With a path refresh due, the refused SET's error arrives before the client's Sync:
    the Sync must reach the server (it waited behind the broker's own path query, which
    the server skipped until that very Sync). The machine test below covers the report of
    an unsafe setting during that query."""
    wire = await broker.session()
    no_sync = _ext("SET search_path = public") + _ext("SET client_encoding = 'SJIS'")
    wire.send(no_sync + c.Flush().encode())
    await asyncio.sleep(0.5)  # the SET's refusal is in: the server skips to the Sync
    wire.send(c.Sync().encode())  # never held behind the broker's own query (it hung so)
    frames = await wire.until({T_READY}, timeout=5)
    assert [e.sqlstate for e in errors(frames)] == ["42501"]  # SET client_encoding refused
    # Now, in a later round trip, a plain simple Query:
    frames = await wire.query(SJIS_READ)
    assert "hunter2" not in str(rows(frames)), rows(frames)
    wire.close()


# --- F2: unqualified pg_* names are assumed to be in pg_catalog ---------------------------------


async def test_unqualified_pg_prefixed_table_outside_the_catalog(broker: Broker) -> None:
    """``SELECT * FROM pg_keys`` was decided as pg_catalog.pg_keys (allowed by
    read-public), but pg_catalog has no such relation, so the server read the path's
    vault.pg_keys (denied by no-secrets: vault.*)."""
    db = "broker_app"
    broker.pg.psql(
        "CREATE TABLE IF NOT EXISTS vault.pg_keys (k text); TRUNCATE vault.pg_keys;"
        "INSERT INTO vault.pg_keys VALUES ('vault-key'); GRANT ALL ON vault.pg_keys TO app_user",
        database=db,
    )
    try:
        wire = await broker.session()
        assert not errors(await wire.query("SET search_path = vault"))
        frames = await wire.query("SELECT * FROM pg_keys")
        assert "vault-key" not in str(rows(frames)), rows(frames)
        wire.close()
    finally:
        broker.pg.psql("DROP TABLE vault.pg_keys", database=db)


# --- F3: UPDATE pg_settings is set_config() in disguise -----------------------------------------

BROAD = """
rules:
  - id: rw-all
    effect: allow
    agents: [bot]
    sql: {statements: [select, insert, update, delete, set], tables: ["*.*"]}
  - id: no-secrets
    effect: deny
    sql: {statements: ["*"], tables: ["public.secrets", "vault.*"]}
"""


async def test_update_pg_settings_moves_the_search_path_unseen(broker: Broker) -> None:
    broker.set_policy(BROAD)
    wire = await broker.session()
    # set_config() is sql-forbidden; this runs it through pg_settings' update rule.
    frames = await wire.query("UPDATE pg_settings SET setting = 'vault' WHERE name = 'search_path'")
    frames = await wire.query("SELECT * FROM items")
    assert "vaulted" not in str(rows(frames)), rows(frames)
    wire.close()


# --- F4: messages the server skips after an error that the broker already processed ------------

LEAK = "SELECT items::text FROM items WHERE id = 1"


async def test_parse_sent_after_the_error_arrived_is_skipped_but_recorded(
    broker: Broker,
) -> None:
    """After an extended-protocol error the server skips to Sync. The broker undid the names
    of messages queued when the error arrived, but recorded a Parse the client sent after
    it (before its Sync) as if it ran, then re-decided that text at Bind while the server
    ran the old one. Now what the client sends until its Sync is dropped."""
    wire = await broker.session()
    wire.send(c.Parse("s1", LEAK).encode() + c.Sync().encode())
    assert not errors(await wire.until({T_READY}))
    # An error, and wait until it is in (Flush, no Sync: the server now skips to Sync).
    wire.send(_ext("SELECT 1/0") + c.Flush().encode())
    from tether.proxy.pg.backend import T_ERROR

    frames = await wire.until({T_ERROR})
    assert [e.sqlstate for e in errors(frames)] == ["22012"]
    # The server skips this Parse; the broker records s1 = a harmless text.
    wire.send(c.Parse("s1", "SELECT 'x'::text").encode() + c.Sync().encode())
    await wire.until({T_READY})
    assert not errors(await wire.query("SET search_path = vault"))
    wire.send(c.Bind("", "s1").encode() + c.Execute("").encode() + c.Sync().encode())
    frames = await wire.until({T_READY})
    assert "vaulted" not in str(rows(frames)), rows(frames)
    wire.close()


# --- F5: SET ROLE moves "$user" (and USAGE-filtered) schemas without a search_path change ---------

ROLE_POLICY = """
rules:
  - id: read-public
    effect: allow
    agents: [bot]
    sql: {statements: [select, set, role], tables: ["public.*", "pg_catalog.*"]}
"""


async def test_set_role_moves_dollar_user_schema_unseen(broker: Broker) -> None:
    db = "broker_app"
    broker.pg.psql(
        "CREATE SCHEMA IF NOT EXISTS app_reader AUTHORIZATION app_reader;"
        "CREATE TABLE IF NOT EXISTS app_reader.items (id int, name text);"
        "TRUNCATE app_reader.items; INSERT INTO app_reader.items VALUES (1, 'reader-only');"
        "GRANT SELECT ON app_reader.items TO app_reader; GRANT app_reader TO app_user",
        database=db,
    )
    try:
        broker.set_policy(ROLE_POLICY)
        wire = await broker.session()
        # "$user" is app_user: no such schema, the server reports the path as public alone.
        assert not errors(await wire.query('SET search_path = "$user", public'))
        assert not errors(await wire.query("SELECT 1"))  # the broker refreshes the path
        assert not errors(await wire.query("SET ROLE app_reader"))
        frames = await wire.query("SELECT name FROM items")
        assert "reader-only" not in str(rows(frames)), rows(frames)
        wire.close()
    finally:
        broker.pg.psql(
            "DROP SCHEMA app_reader CASCADE; REVOKE app_reader FROM app_user", database=db
        )


# --- F7: CREATE SCHEMA elements resolve unqualified names in the new schema AND the old path ----

SANDBOX = """
rules:
  - id: sandbox
    effect: allow
    agents: [bot]
    sql: {statements: [select, ddl], tables: ["agent_*.*"]}
  - id: no-secrets
    effect: deny
    sql: {statements: ["*"], tables: ["public.secrets", "vault.*"]}
"""


async def test_create_schema_view_reads_a_denied_table_of_the_old_path(broker: Broker) -> None:
    """PostgreSQL runs CREATE SCHEMA's elements with the new schema in front of the
    session's path; their unqualified names were resolved to the new schema only."""
    db = "broker_app"
    broker.pg.psql("GRANT CREATE ON DATABASE broker_app TO app_user", database=db)
    try:
        broker.set_policy(SANDBOX)
        wire = await broker.session()
        frames = await wire.query("CREATE SCHEMA agent_x CREATE VIEW v AS SELECT * FROM secrets")
        assert [e.sqlstate for e in errors(frames)] == ["42501"]  # public.secrets: denied
        frames = await wire.query("SELECT * FROM agent_x.v")
        assert "hunter2" not in str(rows(frames)), rows(frames)
        wire.close()
    finally:
        broker.pg.psql(
            "DROP SCHEMA IF EXISTS agent_x CASCADE;"
            "REVOKE CREATE ON DATABASE broker_app FROM app_user",
            database=db,
        )


async def test_sql_function_body_set_search_path_is_not_tracked(broker: Broker) -> None:
    """A LANGUAGE sql body that runs SET search_path moved the session's path unseen, and
    unqualified names then resolved in vault: such a body is refused now."""
    broker.set_policy(
        """
        rules:
          - id: own-functions
            effect: allow
            agents: [bot]
            sql: {statements: [select, set, ddl], tables: ["public.*"]}
          - id: no-secrets
            effect: deny
            sql: {statements: ["*"], tables: ["public.secrets", "vault.*"]}
        """
    )
    wire = await broker.session()
    frames = await wire.query(
        "CREATE FUNCTION public.hop() RETURNS int LANGUAGE sql "
        "AS $$ SET search_path = vault; SELECT 1 $$"
    )
    try:
        assert [e.sqlstate for e in errors(frames)] == ["42501"]  # a SET in the body: refused
        await wire.query("SELECT public.hop()")
        frames = await wire.query("SELECT * FROM items")
        assert "vaulted" not in str(rows(frames)), rows(frames)
    finally:
        broker.pg.psql("DROP FUNCTION IF EXISTS public.hop()", database="broker_app")
        wire.close()


# --- the machine alone: a setting reported during the broker's own path query ---------------


def test_an_unsafe_setting_reported_during_the_path_query_ends_the_session() -> None:
    """The server reports a setting (ParameterStatus) whenever it changes, so the report of
    a SET that ran before may arrive while the broker's current_schemas() query is answered:
    it is checked there too (it was dropped unchecked with that query's rows)."""
    from tether.proxy.pg import backend as be
    from tether.proxy.pg.session import End, ToServer

    from .test_session_machine import _session

    session, _ = _session()
    session.decider.refresh = True  # a SET search_path ran: the path is asked at idle
    sent = session.client(c.Query("SELECT 1"), c.Query("SELECT 1").encode())
    assert any(isinstance(cmd, ToServer) for cmd in sent)  # the path query, then SELECT held
    report = be.ParameterStatus("client_encoding", "SJIS").encode()
    out = session.server([(report[0], report[5:], report)])
    assert session.ended and any(isinstance(cmd, End) and cmd.reason == "unsafe-setting"
                                 for cmd in out)  # fmt: skip


@pytest.mark.parametrize("flush", [False, True])
@pytest.mark.parametrize("allowed", [False, True])
async def test_a_sync_after_a_refusal_is_answered(
    broker: Broker, allowed: bool, flush: bool
) -> None:
    """An allowed SET search_path (a path refresh due), then a refused statement, its
    refusal read before the client's Sync: the Sync was held behind the broker's own path
    query, which the server skipped while it waited for that very Sync (a hang)."""
    wire = await broker.session()
    data = _ext("SET search_path = public") if allowed else b""
    wire.send(data + _ext("SELECT * FROM secrets") + (c.Flush().encode() if flush else b""))
    await asyncio.sleep(0.3)
    wire.send(c.Sync().encode())
    frames = await wire.until({T_READY}, timeout=5)
    assert frames and frames[-1][0] == T_READY
    assert [e.sqlstate for e in errors(frames)] == ["42501"]
    assert not errors(await wire.query("SELECT 1"))  # and the session goes on
    wire.close()


def test_a_role_change_widens_the_schema_set() -> None:
    """``"$user"`` names the current role's schema, and a role may use schemas the login
    could not: a role change brings them into the set, in the same query as after it."""
    from tether.proxy.pg.deciding import Decider

    from .test_session_machine import FakePolicy

    decider = Decider(FakePolicy(), default_schema="public", user="app_user")
    policy = decider.policy
    assert isinstance(policy, FakePolicy)
    decider.decide("SET ROLE app_reader; SELECT * FROM items", "simple")
    assert {schema for _, schema in policy.calls} == {"public", "app_reader"}
    verdict = decider.decide('SET search_path = "$user", hidden', "simple")
    decider.touch(verdict)
    assert decider.schemas == ("public", "app_user", "hidden")
    decider.touch(decider.decide("SET ROLE app_reader", "simple"))
    assert decider.schemas == ("public", "app_user", "hidden", "app_reader")
    assert decider.refresh  # and the server is asked at the next idle moment
