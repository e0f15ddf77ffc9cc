"""Read-only statements are forwarded while their audit event commits; answers wait for it.

* The verdict calls a statement read-only only when every statement is a plain ``select``
  calling no function (:mod:`tether.proxy.pg.deciding`); property tests hold it to the
  engine's own analysis.
* The session machine marks exactly those ``AuditDecided`` early, for simple and extended
  queries (:mod:`tether.proxy.pg.session`).
* Through the wire (:mod:`tether.proxy.pg.connection`): an early statement reaches the
  server while its event is still uncommitted, but no byte of its answer reaches the client
  before the commit; a write is not forwarded before its commit; an early statement whose
  event fails to commit ends the session without its answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.audit.events import AuditEvent
from tether.audit.log import AuditUnavailable
from tether.policy.errors import SqlParseError
from tether.policy.sql import analyze_sql_uncached
from tether.proxy.pg import backend as be
from tether.proxy.pg import codec as c
from tether.proxy.pg import framing
from tether.proxy.pg.deciding import Decider
from tether.proxy.pg.session import AuditDecided, Session

from .conftest import Broker
from .test_enforcement import _session
from .test_fast_path import EnginePolicy
from .wire import Wire, rows

READ_ONLY = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 17;",
    "SELECT * FROM items",
    "select id from items where id = 1; select name from public.items",
    "WITH x AS (SELECT id FROM items) SELECT * FROM x",
    "SELECT i.id FROM items i JOIN items j ON i.id = j.id WHERE i.name LIKE 'a%'",
]
NOT_READ_ONLY = [
    "SELECT nextval('s')",
    "SELECT count(*) FROM items",  # a function call, however harmless
    "SELECT * FROM items FOR UPDATE",
    "SELECT * INTO copy_of_items FROM items",
    "UPDATE items SET name = 'x' WHERE id = 1",
    "WITH x AS (DELETE FROM items RETURNING *) SELECT * FROM x",
    "BEGIN",
    "COMMIT",
    "SELECT 1; UPDATE items SET name = 'y'",
    "EXPLAIN ANALYZE SELECT * FROM items",
    "SET search_path = public",
    "SELEC 1",
]
_FRAGMENTS = [*READ_ONLY, *NOT_READ_ONLY, "SELECT 1", "DELETE FROM items", "SHOW search_path"]


def _decider() -> Decider:
    return Decider(EnginePolicy(), default_schema="public", user="u")


def test_read_only_examples() -> None:
    for text in READ_ONLY:
        assert _decider().decide(text, "simple").read_only, text
    for text in NOT_READ_ONLY:
        assert not _decider().decide(text, "simple").read_only, text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=3), st.sampled_from(["", ";"]))
def test_read_only_means_plain_selects_without_functions(parts: list[str], end: str) -> None:
    text = "; ".join(p.rstrip(";") for p in parts) + end
    verdict = _decider().decide(text, "simple")
    if not verdict.read_only:
        return
    analysis = analyze_sql_uncached(text.rstrip("; "), "public")
    for statement in analysis.statements:
        assert statement.classes == frozenset({"select"}), text
        assert not statement.functions, text


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60))
def test_read_only_never_for_unparsable_text(text: str) -> None:
    try:
        analyze_sql_uncached(text.rstrip(" \t\r\n;") or text, "public")
    except SqlParseError:
        assert not _decider().decide(text, "simple").read_only


def _decided(commands: list[Any]) -> list[AuditDecided]:
    return [cmd for cmd in commands if isinstance(cmd, AuditDecided)]


def test_session_marks_early_only_read_only_allowed_statements() -> None:
    session = Session(EnginePolicy(), default_schema="public", user="u")
    select = c.Query("SELECT * FROM items")
    assert [d.early for d in _decided(session.client(select, select.encode()))] == [True]
    session.server(framing_of(be.CommandComplete("SELECT 10").encode(), be.ready("I")))
    write = c.Query("UPDATE items SET name = 'x' WHERE id = 1")
    assert [d.early for d in _decided(session.client(write, write.encode()))] == [False]
    session.server(framing_of(be.CommandComplete("UPDATE 1").encode(), be.ready("I")))
    counted = c.Query("SELECT count(*) FROM items")
    assert [d.early for d in _decided(session.client(counted, counted.encode()))] == [False]
    session.server(framing_of(be.CommandComplete("SELECT 1").encode(), be.ready("I")))
    out: list[Any] = []
    for message in (
        c.Parse("s1", "SELECT name FROM items WHERE id = $1", ()),
        c.Bind("", "s1", (), (b"1",), ()),
        c.Execute("", 0),
        c.Sync(),
    ):
        out += session.client(message, message.encode())
    assert [d.early for d in _decided(out)] == [True]


def framing_of(*messages: bytes) -> list[tuple[int, bytes, bytes]]:
    return framing.BackendFramer().feed(b"".join(messages))


# --- through the wire ------------------------------------------------------------------------


def _hold_decided(
    broker: Broker, gate: Callable[[], Awaitable[None]]
) -> Callable[[AuditEvent], Awaitable[Any]]:
    """Make every ``decided`` event wait for ``gate()`` before it is appended."""
    log = broker.auditor.log
    real = log.append_position

    async def held(event: AuditEvent) -> Any:
        if event.kind == "sql.statement" and event.action.get("phase") == "decided":
            await gate()
        return await real(event)

    log.append_position = held  # type: ignore[method-assign]
    return real


async def _running(broker: Broker, marker: str) -> bool:
    """Whether the broker's server session has been sent the statement holding ``marker``."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_user' "
        f"AND position('{marker}' in query) > 0"
    )
    out = await asyncio.to_thread(broker.pg.psql, sql, database="broker_app")
    return out.strip() == "1"


async def _nothing_for(wire: Wire, seconds: float) -> bool:
    try:
        data = await asyncio.wait_for(wire.reader.read(65536), seconds)
    except TimeoutError:
        return True
    wire.frames.extend(wire.framer.feed(data))
    return False


async def test_read_only_forwarded_before_commit_answer_held_until_it(broker: Broker) -> None:
    wire = await _session(broker)
    release = asyncio.Event()
    _hold_decided(broker, release.wait)
    wire.send(c.Query("SELECT id, 'early-7f3a' FROM items WHERE id = 3").encode())
    for _ in range(100):
        if await _running(broker, "early-7f3a"):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the read-only statement was not forwarded before its commit")
    assert await _nothing_for(wire, 0.5)  # the answer waits for the commit
    release.set()
    assert rows(await wire.until({be.T_READY})) == [["3", "early-7f3a"]]
    decided = [e for e in await broker.events("sql.statement") if e["action"]["phase"] == "decided"]
    assert decided[-1]["action"]["query"] == "SELECT id, ? FROM items WHERE id = ?"
    wire.close()


async def test_write_not_forwarded_before_its_commit(broker: Broker) -> None:
    wire = await _session(broker)
    release = asyncio.Event()
    _hold_decided(broker, release.wait)
    wire.send(c.Query("UPDATE items SET name = 'held-9c1e' WHERE id = 4").encode())
    await asyncio.sleep(0.5)
    assert not await _running(broker, "held-9c1e")
    assert await _nothing_for(wire, 0.1)
    release.set()
    await wire.until({be.T_READY})
    name = broker.pg.psql("SELECT name FROM items WHERE id = 4", database="broker_app")
    assert name.strip() == "held-9c1e"
    broker.pg.psql("UPDATE items SET name = 'item 4' WHERE id = 4", database="broker_app")
    wire.close()


async def test_failed_commit_of_early_statement_ends_session_without_answer(
    broker: Broker,
) -> None:
    wire = await _session(broker)

    async def fail() -> None:
        await asyncio.sleep(0.5)  # the server has answered by then
        raise AuditUnavailable("disk gone")

    _hold_decided(broker, fail)
    wire.send(c.Query("SELECT id, name FROM items WHERE id = 5").encode())
    frames = await wire.until({be.T_ERROR, be.T_READY})
    assert not any(kind == be.T_DATA_ROW for kind, _body, _raw in frames)
    error = be.decode_backend(frames[-1][0], frames[-1][1])
    assert isinstance(error, be.ErrorResponse) and error.get("S") == "FATAL"
    assert await wire.closed()
