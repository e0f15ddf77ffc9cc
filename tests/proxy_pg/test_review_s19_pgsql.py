"""Probes of the s19 red-team review of the PostgreSQL broker (real broker, real PostgreSQL 15),
each asserting the safe outcome; each one failed before its fix."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.policy.model import Decision
from tether.proxy.pg import codec as c
from tether.proxy.pg.backend import T_COPY_IN, T_READY
from tether.proxy.pg.session import Session, ToServer

from .conftest import Broker
from .wire import Wire, errors, rows

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


# --- messages the server reads as part of a COPY -------------------------------------------------


def _messages(frames: list[tuple[int, bytes, bytes]]) -> list[str | None]:
    return [dict(e.fields).get("M") for e in errors(frames)]


async def _copy_in(wire: Wire, during: bytes) -> list[tuple[int, bytes, bytes]]:
    """``COPY items FROM STDIN`` with ``during`` sent once the server is in copy-in mode,
    then one row and ``CopyDone``; the frames up to the COPY's ReadyForQuery."""
    wire.send(c.Query("COPY items FROM STDIN").encode())
    await wire.until({T_COPY_IN})
    wire.send(during + c.CopyData(b"300\tcopied\n").encode() + c.CopyDone().encode())
    return await wire.until({T_READY})


async def test_a_sync_during_copy_desynchronised_statement_names(broker: Broker) -> None:
    """PostgreSQL ignores a ``Sync`` during COPY FROM STDIN, but the broker waited for its
    answer, and took every later answer for the message before: a duplicate ``Parse`` of
    ``s`` (refused by the server, which keeps the first text) was then not undone, so the
    broker re-decided ``SELECT 1`` at ``Bind`` while the server ran the first text, here
    under a search path whose items is vault.items (denied by no-secrets)."""
    wire = await broker.session()
    try:
        frames = await _copy_in(wire, c.Sync().encode())
        assert not errors(frames), errors(frames)
        wire.send(c.Parse("s", "SELECT t::text FROM items t").encode() + c.Sync().encode())
        assert not errors(await wire.until({T_READY}))
        wire.send(c.Parse("s", "SELECT 1").encode() + c.Sync().encode())
        assert _codes(await wire.until({T_READY})) == ["42P05"]  # the server keeps the first
        assert not errors(await wire.query("SET search_path = vault"))
        wire.send(c.Bind("p", "s").encode() + c.Execute("p").encode() + c.Sync().encode())
        frames = await wire.until({T_READY})
        assert "vaulted" not in str(rows(frames)), rows(frames)
        assert _codes(frames) == ["42501"], errors(frames)
        # A refusal after the COPY is still the broker's, not the sentinel's syntax error.
        frames = await wire.query("SELECT * FROM secrets")
        assert _messages(frames) == [
            "statement refused by policy: denied-by-rule (rule no-secrets)"
        ], errors(frames)
        wire.close()
    finally:
        broker.pg.psql("DELETE FROM items WHERE id = 300", database=DB)


async def test_a_query_during_copy_fails_the_copy_and_runs_nothing(broker: Broker) -> None:
    """PostgreSQL swallows any other message during COPY FROM STDIN (it fails the COPY):
    the broker fails the COPY in its place and owes the client no answer for the message,
    so the next statement's answer is its own."""
    wire = await broker.session()
    try:
        frames = await _copy_in(wire, c.Query("SELECT 'swallowed'").encode())
        assert [e.sqlstate for e in errors(frames)] == ["57014"], errors(frames)
        assert "swallowed" not in str(rows(frames))
        frames = await wire.query("SELECT 'next'")
        assert rows(frames) == [["next"]], frames
        frames = await wire.query("SELECT count(*) FROM items WHERE id = 300")
        assert rows(frames) == [["0"]]  # the COPY failed
        wire.close()
    finally:
        broker.pg.psql("DELETE FROM items WHERE id = 300", database=DB)


async def test_extended_copy_with_a_pipelined_sync(broker: Broker) -> None:
    """An extended-protocol COPY sent with its ``Sync`` (libpq sends another after
    ``CopyDone``): PostgreSQL ignores the first one inside the COPY, and so must the
    broker, so the second gets the one ReadyForQuery."""
    wire = await broker.session()
    try:
        wire.send(
            c.Parse("", "COPY items FROM STDIN").encode() + c.Bind("", "").encode()
            + c.Execute("").encode() + c.Sync().encode()
        )  # fmt: skip
        await wire.until({T_COPY_IN})
        wire.send(c.CopyData(b"300\tcopied\n").encode() + c.CopyDone().encode())
        wire.send(c.Sync().encode())
        frames = await wire.until({T_READY})
        assert not errors(frames), errors(frames)
        frames = await wire.query("SELECT name FROM items WHERE id = 300")
        assert rows(frames) == [["copied"]], frames
        wire.close()
    finally:
        broker.pg.psql("DELETE FROM items WHERE id = 300", database=DB)


# The session machine alone: whatever a client sends during a COPY, the server is sent only
# copy messages until the COPY ends, and the broker waits for no answer the server owes not.


class _Allow:
    version = "v1"

    def decide(self, query: str, default_schema: str, shape: object = None) -> Decision:
        return Decision("allow", "r1", "allowed", None, "v1")

    def current(self) -> object:
        return self


_DURING = st.lists(
    st.sampled_from(
        [
            c.Sync(), c.Flush(), c.Query("SELECT 1"), c.Parse("s", "SELECT 1"),
            c.Bind("", ""), c.Describe("S", "s"), c.CopyData(b"1\tx\n"), c.CopyDone(),
            c.CopyFail("no"),
        ]
    ),
    max_size=6,
)  # fmt: skip


def _server_frame(kind: int, body: bytes = b"") -> tuple[int, bytes, bytes]:
    return (kind, body, bytes([kind]) + (len(body) + 4).to_bytes(4, "big") + body)


def _frontend(data: bytes) -> list[c.FrontendMessage]:
    out = []
    while data:
        size = int.from_bytes(data[1:5], "big")
        out.append(c.decode_frontend(data[0], data[5 : 1 + size]))
        data = data[1 + size :]
    return out


_ANSWERED = (c.Query, c.Parse, c.Bind, c.Describe, c.Execute, c.Close, c.Sync)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_DURING, _DURING)
def test_messages_during_copy_never_reach_the_server_as_themselves(
    before: list[c.FrontendMessage], during: list[c.FrontendMessage]
) -> None:
    """``before``: sent right behind the COPY, before the server's CopyInResponse; ``during``:
    after it. The server reads all of them in copy-in mode until the first CopyDone or
    CopyFail: only copy messages (or a Flush) may reach it until then. Once it answered the
    COPY, the broker owes one answer per message it forwarded that the server answers."""
    session = Session(_Allow(), default_schema="public", user="u1")
    sent: list[c.FrontendMessage] = []

    def collect(commands: list[object]) -> None:
        for command in commands:
            if isinstance(command, ToServer):
                sent.extend(_frontend(command.data))

    collect(session.client(c.Query("COPY items FROM STDIN"), b""))
    sent.clear()
    for message in before:
        collect(session.client(message, message.encode()))
    collect(session.server([_server_frame(T_COPY_IN, b"\x00\x00\x00")]))
    for message in during:
        collect(session.client(message, message.encode()))
    ended = next((i for i, m in enumerate(sent) if isinstance(m, c.CopyDone | c.CopyFail)), None)
    for message in sent if ended is None else sent[: ended + 1]:
        # (a Flush is ignored there and owes no answer)
        assert isinstance(message, c.CopyData | c.CopyDone | c.CopyFail | c.Flush), sent
    if ended is None:
        assert len(session._pending) == 1  # the COPY's answer only
        return
    sent.clear()
    collect(session.server([_server_frame(0x43, b"COPY 1\x00"), _server_frame(T_READY, b"I")]))
    assert len(session._pending) == sum(isinstance(m, _ANSWERED) for m in sent), sent


# --- names longer than 63 bytes: PostgreSQL keeps 63, a rule kept them whole --------------------

LONG = "secret_" + "x" * 56 + "_of_the_migration"  # as a DDL script names it
STORED = LONG[:63]  # the name PostgreSQL keeps (and reports in the catalog)


async def test_a_deny_rule_naming_a_long_table_as_written_matches_it(broker: Broker) -> None:
    """``CREATE TABLE <LONG>`` makes the table <LONG cut to 63 bytes>, and every statement's
    names are cut the same way; a deny rule naming the table as the script wrote it never
    matched, so ``SELECT * FROM <LONG>`` read it under ``public.*``."""
    broker.pg.psql(
        f"CREATE TABLE public.{LONG} (v text); INSERT INTO public.{LONG} VALUES ('long-secret');"
        f"GRANT ALL ON public.{LONG} TO app_user",
        database=DB,
    )
    broker.set_policy(
        f"""
        rules:
          - id: read-public
            effect: allow
            agents: [bot]
            sql: {{statements: [select], tables: ["public.*"]}}
          - id: no-long
            effect: deny
            sql: {{statements: ["*"], tables: ["public.{LONG}"]}}
        """
    )
    try:
        wire = await broker.session()
        for spelling in (LONG, f'"{STORED}"', f"public.{STORED}zzz"):
            frames = await wire.query(f"SELECT * FROM {spelling}")
            assert "long-secret" not in str(rows(frames)), (spelling, rows(frames))
            assert _codes(frames) == ["42501"], (spelling, errors(frames))
        wire.close()
    finally:
        broker.pg.psql(f"DROP TABLE IF EXISTS public.{LONG}", database=DB)


# --- the audit trail: a custom setting's value written as a name ---------------------------------


async def test_a_custom_setting_value_is_not_in_the_trail(broker: Broker) -> None:
    """``SET app.customer = acme_corp`` sets a string constant to PostgreSQL, but was audited
    as written (only literal tokens were replaced; the audit trail's own redaction hides
    only values of secret-named keys such as ``app.token``)."""
    wire = await broker.session()
    assert not errors(await wire.query("SET app.customer = acme_corp"))
    assert not errors(await wire.query('SET app.tenant TO "globex-inc"'))
    wire.close()
    events = await broker.wait_for("sql.statement", 2)
    trail = str(events)
    assert "acme_corp" not in trail and "globex-inc" not in trail, trail
    assert "SET app.customer = ?" in trail, trail
