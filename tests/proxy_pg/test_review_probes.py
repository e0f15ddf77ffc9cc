"""Adversarial wire probes from a review of the PostgreSQL broker (real broker, real server)."""

from __future__ import annotations

from tether.proxy.pg import codec as c
from tether.proxy.pg.backend import T_READY

from .conftest import Broker
from .wire import Wire, errors, rows, status

# Unqualified: public.items when parsed, vault.items (denied) once re-analysed under the path
# vault; one text column either way, so the server re-plans it without complaint.
LEAK = "SELECT items::text FROM items WHERE id = 1"


async def _session(broker: Broker) -> Wire:
    return await broker.session()


async def _pipeline(wire: Wire, *messages: object) -> list[tuple[int, bytes, bytes]]:
    wire.send(b"".join(m.encode() for m in messages))  # type: ignore[attr-defined]
    return await wire.until({T_READY})


async def test_statement_the_server_refused_is_not_rebound_under_another_text(
    broker: Broker,
) -> None:
    """A Parse the server fails must not stay in the broker's registry: otherwise a later
    Parse of the same name runs on the server while the broker re-decides the old text."""
    wire = await _session(broker)
    # Allowed by policy (qualified, public), but the server fails it (no such column).
    frames = await _pipeline(wire, c.Parse("s1", "SELECT nosuchcolumn FROM public.items"), c.Sync())
    assert [e.sqlstate for e in errors(frames)] == ["42703"]
    # The name is free on the server; this text is allowed under public and parses there.
    frames = await _pipeline(wire, c.Parse("s1", LEAK), c.Sync())
    assert not errors(frames)
    # Allowed (class set): unqualified names now resolve in vault (denied by no-secrets).
    assert not errors(await wire.query("SET search_path = vault"))
    frames = await _pipeline(wire, c.Bind("", "s1"), c.Execute(""), c.Sync())
    assert ["(1,vaulted)"] not in rows(frames)
    assert [e.sqlstate for e in errors(frames)] == ["42501"]
    wire.close()


async def test_parse_skipped_after_an_error_is_not_registered(broker: Broker) -> None:
    """After an error the server skips to Sync; a Parse it skipped made no statement."""
    wire = await _session(broker)
    frames = await _pipeline(
        wire,
        c.Parse("", "SELECT 1/0"), c.Bind("", ""), c.Execute(""),
        c.Parse("s2", "SELECT id FROM public.items"),
        c.Sync(),
    )  # fmt: skip
    assert [e.sqlstate for e in errors(frames)] == ["22012"]
    assert not errors(await _pipeline(wire, c.Parse("s2", LEAK), c.Sync()))
    assert not errors(await wire.query("SET search_path = vault"))
    frames = await _pipeline(wire, c.Bind("", "s2"), c.Execute(""), c.Sync())
    assert ["(1,vaulted)"] not in rows(frames)
    wire.close()


async def test_close_skipped_after_an_error_keeps_the_statement(broker: Broker) -> None:
    """A Close the server skipped did not close: the broker must still hold the old text."""
    wire = await _session(broker)
    assert not errors(await _pipeline(wire, c.Parse("s3", LEAK), c.Sync()))
    frames = await _pipeline(
        wire,
        c.Parse("", "SELECT 1/0"), c.Bind("", ""), c.Execute(""),
        c.Close("S", "s3"),
        c.Sync(),
    )  # fmt: skip
    assert [e.sqlstate for e in errors(frames)] == ["22012"]
    # The server still has s3 and refuses this Parse (duplicate name).
    frames = await _pipeline(wire, c.Parse("s3", "SELECT 1"), c.Sync())
    assert [e.sqlstate for e in errors(frames)] == ["42P05"]
    assert not errors(await wire.query("SET search_path = vault"))
    frames = await _pipeline(wire, c.Bind("", "s3"), c.Execute(""), c.Sync())
    assert ["(1,vaulted)"] not in rows(frames)
    wire.close()


async def test_query_skipped_in_a_failed_pipeline_leaves_no_answer_owed(broker: Broker) -> None:
    """The server skips a simple Query that follows an extended-protocol error until Sync;
    the broker must not keep waiting for its answer (its queue would be off by one)."""
    wire = await _session(broker)
    frames = await _pipeline(
        wire, c.Parse("", "SELECT 1/0"), c.Bind("", ""), c.Execute(""), c.Query("SELECT 1"),
        c.Sync(),
    )  # fmt: skip
    assert [e.sqlstate for e in errors(frames)] == ["22012"] and status(frames) == "I"
    assert status(await wire.query("BEGIN")) == "T"
    frames = await wire.query("SELECT * FROM secrets")
    assert [e.sqlstate for e in errors(frames)] == ["42501"] and status(frames) == "E"
    assert status(await wire.query("ROLLBACK")) == "I"
    assert rows(await wire.query("SELECT 7")) == [["7"]]
    wire.close()


async def test_refused_function_call_is_audited(broker: Broker) -> None:
    """Every action, allowed or not, is audited (DESIGN invariant 5): the fast-path call too."""
    wire = await _session(broker)
    wire.send(c.FunctionCall(b"\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00").encode())
    frames = await wire.until({T_READY})
    assert [e.sqlstate for e in errors(frames)] == ["42501"]
    wire.close()
    await broker.wait_for("session.end")
    decided = [e for e in await broker.events("sql.statement") if e["action"]["phase"] == "decided"]
    assert [(e["decision"], e["reason"]) for e in decided] == [("deny", "sql-forbidden")]


async def test_refusal_in_a_pipeline_inside_a_transaction_block_aborts_it(broker: Broker) -> None:
    wire = await _session(broker)
    assert status(await wire.query("BEGIN")) == "T"
    frames = await _pipeline(
        wire,
        c.Parse("", "INSERT INTO items VALUES (300, 'x')"), c.Bind("", ""), c.Execute(""),
        c.Parse("", "DELETE FROM secrets"), c.Bind("", ""), c.Execute(""),
        c.Parse("", "INSERT INTO items VALUES (301, 'x')"), c.Bind("", ""), c.Execute(""),
        c.Sync(),
    )  # fmt: skip
    assert [e.sqlstate for e in errors(frames)] == ["42501"] and status(frames) == "E"
    assert status(await wire.query("COMMIT")) == "I"  # a failed block commits as a rollback
    assert rows(await wire.query("SELECT count(*) FROM items WHERE id IN (300, 301)")) == [["0"]]
    wire.close()


async def test_row_limits_suspend_and_resume_a_described_portal(broker: Broker) -> None:
    wire = await _session(broker)
    frames = await _pipeline(
        wire,
        c.Parse("a", "SELECT id FROM items WHERE id <= 4 ORDER BY id"), c.Bind("pa", "a"),
        c.Describe("P", "pa"), c.Execute("pa", 2), c.Execute("pa", 2), c.Execute("pa", 2),
        c.Close("P", "pa"), c.Sync(),
    )  # fmt: skip
    assert bytes(f[0] for f in frames) == b"12TDDsDDsC3Z"
    assert rows(frames) == [["1"], ["2"], ["3"], ["4"]]
    frames = await _pipeline(wire, c.Execute("pa"), c.Sync())  # closed: unknown to the broker
    assert [e.sqlstate for e in errors(frames)] == ["42501"]
    wire.close()


async def test_copy_data_pipelined_behind_its_copy_statement(broker: Broker) -> None:
    """A client may send the rows right behind ``COPY ... FROM STDIN`` (the server reads them
    in order); the broker drops them as "outside copy mode" and the session hangs."""
    wire = await _session(broker)
    wire.send(
        c.Query("COPY items FROM STDIN").encode()
        + c.CopyData(b"310\tpiped\n").encode() + c.CopyDone().encode()
    )  # fmt: skip
    frames = await wire.until({T_READY}, timeout=5)
    assert not errors(frames) and status(frames) == "I"
    assert not errors(await wire.query("DELETE FROM items WHERE id = 310"))
    wire.close()
