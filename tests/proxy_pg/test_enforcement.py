"""Enforcement through the wire: simple and extended protocol, transactions, search_path, COPY."""

from __future__ import annotations

import pytest

from tether.proxy.pg import codec as c
from tether.proxy.pg.backend import T_READY

from .conftest import Broker
from .wire import Wire, errors, rows, status

# Every bypass class of spec 5.3, each of which must be refused by the test policy.
BYPASSES = [
    "SELECT * FROM secrets",
    "SELECT * FROM public.secrets",
    'SELECT * FROM "secrets"',
    "SELECT * FROM vault.items",
    "WITH x AS (DELETE FROM items RETURNING *) SELECT * FROM x",
    "SELECT * FROM items FOR UPDATE",
    "COPY items TO '/tmp/x'",
    "COPY items FROM PROGRAM 'id'",
    "DO $$BEGIN PERFORM 1; END$$",
    "EXECUTE p1",
    "LOAD 'plpgsql'",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_catalog.pg_read_file('/etc/passwd')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT dblink('x', 'y')",
    "SELECT set_config('search_path', 'vault', false)",
    "SELECT query_to_xml('select * from secrets', true, true, '')",
    "SELECT pg_terminate_backend(1)",
    "SET ROLE app_admin",
    "SET SESSION AUTHORIZATION app_admin",
    "EXPLAIN ANALYZE DELETE FROM items",
    "SELECT * INTO newtable FROM items",
    "CREATE TABLE t2 (id int)",
    "DROP TABLE items",
    "TRUNCATE items",
    "GRANT ALL ON items TO PUBLIC",
    "ALTER SYSTEM SET archive_command = 'x'",
    "CREATE EXTENSION dblink",
    "PREPARE p2 AS DELETE FROM secrets",
    "SELECT 1; DELETE FROM secrets",
    "SELECT 1; SELECT * FROM vault.items",
    "SET search_path = vault; SELECT * FROM items",
    "SELECT * FROM items WHERE id = (SELECT id FROM secrets LIMIT 1)",
    "SELEC 1",
    "SELECT 1 /* unterminated",
]


async def _session(broker: Broker) -> Wire:
    return await broker.session()


async def _count_items(broker: Broker) -> str:
    return broker.pg.psql("SELECT count(*) FROM items", database="broker_app")


@pytest.mark.parametrize("sql", BYPASSES)
async def test_bypass_simple_and_parse(broker: Broker, sql: str) -> None:
    wire = await _session(broker)
    before = await _count_items(broker)
    frames = await wire.query(sql)
    assert [e.sqlstate for e in errors(frames)] == ["42501"], sql
    assert status(frames) == "I"
    # The same text as a Parse of the extended protocol: refused before the server sees it.
    wire.send(c.Parse("", sql).encode() + c.Bind("", "").encode() + c.Execute("").encode())
    wire.send(c.Sync().encode())
    frames = await wire.until({T_READY})
    assert [e.sqlstate for e in errors(frames)] == ["42501"], sql
    assert status(frames) == "I"
    assert await _count_items(broker) == before
    assert rows(await wire.query("SELECT count(*) FROM items")) == [[before]]
    wire.close()


async def test_denial_in_transaction_aborts_it(broker: Broker) -> None:
    wire = await _session(broker)
    assert status(await wire.query("BEGIN")) == "T"
    assert status(await wire.query("INSERT INTO items VALUES (100, 'x')")) == "T"
    frames = await wire.query("SELECT * FROM secrets")
    assert [e.sqlstate for e in errors(frames)] == ["42501"]
    assert status(frames) == "E"
    frames = await wire.query("SELECT 1")
    assert [e.sqlstate for e in errors(frames)] == ["25P02"]
    frames = await wire.query("COMMIT")
    assert status(frames) == "I"
    assert rows(await wire.query("SELECT count(*) FROM items WHERE id = 100")) == [["0"]]
    wire.close()


async def test_denial_in_pipeline_rolls_back_and_skips_to_sync(broker: Broker) -> None:
    wire = await _session(broker)
    pipeline = [
        c.Parse("", "INSERT INTO items VALUES (101, 'y')"), c.Bind("", ""), c.Execute(""),
        c.Parse("", "DELETE FROM secrets"), c.Bind("", ""), c.Execute(""),
        c.Parse("", "INSERT INTO items VALUES (102, 'z')"), c.Bind("", ""), c.Execute(""),
        c.Sync(),
    ]  # fmt: skip
    wire.send(b"".join(m.encode() for m in pipeline))
    frames = await wire.until({T_READY})
    assert [e.sqlstate for e in errors(frames)] == ["42501"]
    assert status(frames) == "I"
    found = rows(await wire.query("SELECT count(*) FROM items WHERE id IN (101, 102)"))
    assert found == [["0"]]
    wire.close()


async def test_named_statements_and_portals(broker: Broker) -> None:
    wire = await _session(broker)
    wire.send(
        c.Parse("s1", "SELECT name FROM items WHERE id = $1").encode()
        + c.Bind("p1", "s1", (), (b"4",)).encode() + c.Execute("p1").encode()
        + c.Bind("", "nope", (), ()).encode() + c.Execute("").encode() + c.Sync().encode()
    )  # fmt: skip
    frames = await wire.until({T_READY})
    assert rows(frames) == [["item 4"]]
    assert [e.sqlstate for e in errors(frames)] == ["42501"]
    # A statement prepared with SQL PREPARE cannot be bound through the protocol.
    assert not errors(await wire.query("PREPARE q AS SELECT 1"))
    wire.send(c.Bind("", "q").encode() + c.Execute("").encode() + c.Sync().encode())
    assert [e.sqlstate for e in errors(await wire.until({T_READY}))] == ["42501"]
    # Closing a statement forgets it.
    wire.send(c.Close("S", "s1").encode() + c.Bind("", "s1", (), (b"1",)).encode())
    wire.send(c.Execute("").encode() + c.Sync().encode())
    assert [e.sqlstate for e in errors(await wire.until({T_READY}))] == ["42501"]
    wire.close()


async def test_search_path_tracked(broker: Broker) -> None:
    wire = await _session(broker)
    # read-public allows "set": the SET itself passes, then unqualified names resolve in vault.
    assert not errors(await wire.query("SET search_path = vault"))
    frames = await wire.query("SELECT * FROM items")
    assert [e.sqlstate for e in errors(frames)] == ["42501"]
    wire.send(c.Parse("", "SELECT * FROM items").encode() + c.Sync().encode())
    assert [e.sqlstate for e in errors(await wire.until({T_READY}))] == ["42501"]
    # Rolled back inside a transaction: the server is asked, and public is back.
    assert not errors(await wire.query("RESET search_path"))
    assert rows(await wire.query("SELECT count(*) > 0 FROM items")) == [["t"]]
    assert not errors(await wire.query("BEGIN; SET LOCAL search_path = vault; ROLLBACK"))
    assert rows(await wire.query("SELECT count(*) > 0 FROM items")) == [["t"]]
    wire.close()


async def test_function_call_and_unsafe_settings(broker: Broker) -> None:
    wire = await _session(broker)
    frames = await wire.query("SELECT 1")
    wire.send(c.FunctionCall(b"\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00").encode())
    frames = await wire.until({T_READY})
    assert [e.sqlstate for e in errors(frames)] == ["42501"]
    # standard_conforming_strings off would change how backslashes lex: the SET is refused.
    frames = await wire.query("SET standard_conforming_strings = off")
    assert [e.sqlstate for e in errors(frames)] == ["42501"]
    assert not errors(await wire.query("SELECT 1"))  # and the session goes on
    # A function of the database's own that sets it anyway: the server reports the change,
    # and the session ends.
    broker.pg.psql(
        "CREATE OR REPLACE FUNCTION public.strings_off() RETURNS int LANGUAGE plpgsql AS "
        "$$ BEGIN SET standard_conforming_strings = off; RETURN 1; END $$",
        database="broker_app",
    )
    try:
        wire.send(c.Query("SELECT public.strings_off()").encode())
        frames = await wire.until({0x45})
        assert [e.sqlstate for e in errors(frames)] == ["55000"]
        assert await wire.closed()
        (end,) = await broker.wait_for("session.end")
        assert end["reason"] == "unsafe-setting"
    finally:
        broker.pg.psql("DROP FUNCTION public.strings_off()", database="broker_app")


async def test_copy_stdin_and_stdout(broker: Broker) -> None:
    wire = await _session(broker)
    wire.send(c.Query("COPY items FROM STDIN").encode())
    frames = await wire.until({0x47})
    assert frames[-1][0] == 0x47  # CopyInResponse
    wire.send(c.CopyData(b"200\tcopied\n").encode() + c.CopyDone().encode())
    frames = await wire.until({T_READY})
    assert not errors(frames)
    frames = await wire.query("COPY (SELECT name FROM items WHERE id = 200) TO STDOUT")
    assert any(f[0] == 0x64 and f[1] == b"copied\n" for f in frames)
    # COPY into a table the policy does not allow writing is refused.
    frames = await wire.query("COPY secrets FROM STDIN")
    assert [e.sqlstate for e in errors(frames)] == ["42501"]
    # Copy data outside copy mode is dropped, not forwarded.
    wire.send(c.CopyData(b"201\tsneaky\n").encode() + c.CopyDone().encode())
    assert rows(await wire.query("SELECT count(*) FROM items WHERE id = 201")) == [["0"]]
    await wire.query("DELETE FROM items WHERE id = 200")
    wire.close()


async def test_empty_queries_and_path_refresh_after_an_error(broker: Broker) -> None:
    wire = await _session(broker)
    frames = await wire.query(" ; ")
    assert [f[0] for f in frames] == [0x49, T_READY]  # EmptyQueryResponse from the server
    # A search path touched in a transaction that then fails: no refresh while aborted.
    assert status(await wire.query("BEGIN")) == "T"
    assert not errors(await wire.query("SET LOCAL search_path = vault"))
    assert [e.sqlstate for e in errors(await wire.query("SELECT 1/0"))] == ["22012"]
    assert [e.sqlstate for e in errors(await wire.query("SELECT 1"))] == ["25P02"]
    assert status(await wire.query("ROLLBACK")) == "I"
    assert rows(await wire.query("SELECT count(*) > 0 FROM items")) == [["t"]]
    wire.close()


async def test_savepoint_recovers_from_a_refusal(broker: Broker) -> None:
    wire = await _session(broker)
    assert status(await wire.query("BEGIN")) == "T"
    assert not errors(await wire.query("INSERT INTO items VALUES (110, 'kept')"))
    assert not errors(await wire.query("SAVEPOINT s1"))
    frames = await wire.query("DELETE FROM secrets")
    assert [e.sqlstate for e in errors(frames)] == ["42501"] and status(frames) == "E"
    assert status(await wire.query("ROLLBACK TO SAVEPOINT s1")) == "T"
    assert status(await wire.query("COMMIT")) == "I"
    assert rows(await wire.query("SELECT name FROM items WHERE id = 110")) == [["kept"]]
    assert not errors(await wire.query("DELETE FROM items WHERE id = 110"))
    wire.close()
