"""The sans-IO session machine, scripted: messages in, commands out (no sockets, no server)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.policy.model import Decision
from tether.proxy.pg import backend as be
from tether.proxy.pg import codec as c
from tether.proxy.pg import framing
from tether.proxy.pg.extended import touches_prepared
from tether.proxy.pg.session import (
    SCHEMAS_SQL,
    SENTINEL_SQL,
    AuditDecided,
    AuditResult,
    End,
    Session,
    ToClient,
    ToServer,
)

ALLOWED_TABLES = ("items",)


class FakePolicy:
    """Allows statements that read only ``items`` in schema ``public`` (a stand-in for a
    unit test of the machine alone; the end-to-end tests use the real engine)."""

    version = "v1"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def decide(self, query: str, default_schema: str, shape: object = None) -> Decision:
        self.calls.append((query, default_schema))
        words = query.lower().replace(";", " ").split()
        ok = (
            default_schema == "public"
            and words[:1] in (["select"], ["set"], ["begin"], ["rollback"])
            and "secrets" not in words
        )
        if ok:
            return Decision("allow", "r1", "allowed", None, "v1")
        return Decision("deny", "d1", "denied-by-rule", None, "v1")

    def current(self) -> object:
        return self


def _session() -> tuple[Session, FakePolicy]:
    policy = FakePolicy()
    return Session(policy, default_schema="public", user="u1"), policy


def _sent(commands: list[object]) -> bytes:
    return b"".join(cmd.data for cmd in commands if isinstance(cmd, ToServer))


def _to_client(commands: list[object]) -> bytes:
    return b"".join(cmd.data for cmd in commands if isinstance(cmd, ToClient))


def _frames(*messages: bytes) -> list[tuple[int, bytes, bytes]]:
    return framing.BackendFramer().feed(b"".join(messages))


def test_allowed_query_audited_before_forwarding() -> None:
    session, _ = _session()
    raw = c.Query("SELECT * FROM items").encode()
    commands = session.client(c.Query("SELECT * FROM items"), raw)
    assert isinstance(commands[0], AuditDecided)
    assert commands[1] == ToServer(raw)
    out = session.server(_frames(be.CommandComplete("SELECT 3").encode(), be.ready("I")))
    results = [cmd for cmd in out if isinstance(cmd, AuditResult)]
    assert len(results) == 1 and results[0].rows == 3
    assert _to_client(out).endswith(be.ready("I"))


def test_denied_query_idle_is_answered_locally() -> None:
    session, _ = _session()
    commands = session.client(c.Query("DELETE FROM items"), b"")
    assert not _sent(commands)
    reply = _to_client(commands)
    assert b"42501" in reply and reply.endswith(be.ready("I"))


def test_denied_query_in_transaction_uses_the_sentinel() -> None:
    session, _ = _session()
    session.status = "T"
    commands = session.client(c.Query("DELETE FROM items"), b"")
    assert _sent(commands) == c.Query(SENTINEL_SQL).encode()
    server_error = be.error("42601", "syntax error at or near TETHER").encode()
    out = _to_client(session.server(_frames(server_error, be.ready("E"))))
    assert b"42501" in out and b"42601" not in out and out.endswith(be.ready("E"))


def test_extended_refusal_skips_to_sync() -> None:
    session, _ = _session()
    sent = b""
    for message in (
        c.Parse("", "SELECT 1"), c.Bind("", ""), c.Execute(""),
        c.Parse("", "DELETE FROM items"), c.Bind("", ""), c.Execute(""), c.Sync(),
    ):  # fmt: skip
        sent += _sent(session.client(message, message.encode()))
    decoder = framing.FrontendDecoder()
    decoder.feed(c.StartupMessage(c.PROTOCOL_3_0, ()).encode())
    forwarded = [m for m, _ in decoder.feed(sent)]
    assert forwarded == [
        c.Parse("", "SELECT 1"), c.Bind("", ""), c.Execute(""),
        c.Parse("tether.refused", SENTINEL_SQL), c.Sync(),
    ]  # fmt: skip
    reply = session.server(
        _frames(
            b"1\x00\x00\x00\x04",
            b"2\x00\x00\x00\x04",
            be.CommandComplete("SELECT 1").encode(),
            be.error("42601", "syntax error").encode(),
            be.ready("I"),
        )
    )
    body = _to_client(reply)
    assert b"42501" in body and b"42601" not in body


def test_search_path_widens_then_refreshes() -> None:
    session, _policy = _session()
    session.client(c.Query("SET search_path = vault"), c.Query("SET search_path = vault").encode())
    assert session.decider.schemas == ("public", "vault")
    session.server(_frames(be.CommandComplete("SET").encode(), be.ready("I")))
    # Next statement: the machine asks the server first and holds the client's message.
    commands = session.client(
        c.Query("SELECT * FROM items"), c.Query("SELECT * FROM items").encode()
    )
    assert _sent(commands) == c.Query(SCHEMAS_SQL).encode()
    row = (
        b"D" + (4 + 2 + 4 + 5).to_bytes(4, "big") + b"\x00\x01" + (5).to_bytes(4, "big") + b"vault"
    )
    out = session.server(_frames(row, be.CommandComplete("SELECT 1").encode(), be.ready("I")))
    assert session.decider.schemas == ("vault",)
    # The held query is decided under the new schema: the fake policy denies it.
    assert not _sent(out)
    assert b"42501" in _to_client(out) and b"vault" not in _to_client(out)


def test_unsafe_parameter_ends_the_session() -> None:
    session, _ = _session()
    out = session.server(_frames(be.ParameterStatus("client_encoding", "SJIS").encode()))
    assert isinstance(out[-1], End) and session.ended
    assert b"SJIS" not in b"".join(cmd.data for cmd in out if isinstance(cmd, ToClient))


def test_copy_data_outside_copy_mode_is_dropped() -> None:
    session, _ = _session()
    assert session.client(c.CopyData(b"x"), c.CopyData(b"x").encode()) == []


class CopyPolicy(FakePolicy):
    """The fake policy, and ``COPY items FROM STDIN`` allowed too."""

    def decide(self, query: str, default_schema: str, shape: object = None) -> Decision:
        if query.lower().startswith("copy items from stdin"):
            return Decision("allow", "r2", "allowed", None, "v1")
        return super().decide(query, default_schema, shape)


def test_copy_data_right_behind_an_allowed_copy_is_forwarded_in_order() -> None:
    session = Session(CopyPolicy(), default_schema="public", user="u1")
    copy = c.Query("COPY items FROM STDIN")
    out = session.client(copy, copy.encode())
    assert isinstance(out[0], AuditDecided) and out[1] == ToServer(copy.encode())
    for message in (c.CopyData(b"1\tx\n"), c.CopyDone()):
        assert session.client(message, message.encode()) == [ToServer(message.encode())]


def test_copy_data_behind_a_refused_copy_or_a_read_is_dropped() -> None:
    session, _ = _session()  # the fake policy refuses COPY
    session.client(c.Query("SELECT * FROM items"), c.Query("SELECT * FROM items").encode())
    copy = c.Query("COPY items FROM STDIN")
    session.client(copy, copy.encode())  # refused: a sentinel goes in its place
    for message in (c.CopyData(b"1\tx\n"), c.CopyDone(), c.CopyFail("no")):
        assert session.client(message, message.encode()) == []


# --- property: nothing the policy refused ever reaches the server -----------------------------

TEXTS = ["SELECT * FROM items", "DELETE FROM items", "SELECT * FROM secrets", "SET search_path = x",
         "BEGIN", "ROLLBACK", "SELECT 1; DELETE FROM items", "", "DROP TABLE items"]  # fmt: skip
NAMES = ["", "a", "b"]
messages = st.one_of(
    st.builds(c.Query, st.sampled_from(TEXTS)),
    st.builds(c.Parse, st.sampled_from(NAMES), st.sampled_from(TEXTS)),
    st.builds(c.Bind, st.sampled_from(NAMES), st.sampled_from(NAMES)),
    st.builds(c.Execute, st.sampled_from(NAMES)),
    st.builds(c.Describe, st.sampled_from("SP"), st.sampled_from(NAMES)),
    st.builds(c.Close, st.sampled_from("SP"), st.sampled_from(NAMES)),
    st.builds(c.Sync),
    st.builds(c.Flush),
    st.builds(c.CopyData, st.binary(max_size=4)),
    st.builds(c.FunctionCall, st.binary(max_size=4)),
)
server_replies = st.lists(
    st.sampled_from([
        be.ready("I"), be.ready("T"), be.ready("E"), be.CommandComplete("SELECT 1").encode(),
        be.error("42601", "x").encode(), b"1\x00\x00\x00\x04", b"2\x00\x00\x00\x04",
        b"G\x00\x00\x00\x07\x00\x00\x00", be.ParameterStatus("TimeZone", "UTC").encode(),
    ]),
    max_size=4,
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(messages, server_replies), max_size=12))
def test_refused_text_never_reaches_the_server(
    steps: list[tuple[c.FrontendMessage, list[bytes]]],
) -> None:
    session, policy = _session()
    decoder = framing.FrontendDecoder()
    decoder.feed(c.StartupMessage(c.PROTOCOL_3_0, ()).encode())
    for message, replies in steps:
        commands = session.client(message, message.encode())
        for sent, _raw in decoder.feed(_sent(commands)):
            if isinstance(sent, c.Query | c.Parse):
                text = sent.text if isinstance(sent, c.Query) else sent.query
                if text in (SENTINEL_SQL, SCHEMAS_SQL) or not text.strip(" ;"):
                    continue
                assert policy.decide(text, "public").allowed, text
            assert not isinstance(sent, c.FunctionCall)
        if replies:
            session.server(framing.BackendFramer().feed(b"".join(replies)))
        if session.ended:
            return


# --- the broker's statement names follow the server's ------------------------------------------


class PreparingPolicy(FakePolicy):
    """The fake policy, and SQL ``DEALLOCATE`` and ``DISCARD`` allowed too."""

    def decide(self, query: str, default_schema: str, shape: object = None) -> Decision:
        if query.lower().split()[:1] in (["deallocate"], ["discard"]):
            return Decision("allow", "r3", "allowed", None, "v1")
        return super().decide(query, default_schema, shape)


def _texts(session: Session) -> dict[str, str]:
    return {name: p.query for name, p in session._extended._statements.items()}


def test_parse_of_a_name_in_use_takes_the_new_text_unless_the_server_refuses_it() -> None:
    session, _ = _session()
    first, second = c.Parse("s1", "SELECT * FROM items"), c.Parse("s1", "SELECT 2")
    session.client(first, first.encode())
    session.client(c.Sync(), c.Sync().encode())
    session.server(_frames(b"1\x00\x00\x00\x04", be.ready("I")))
    session.client(second, second.encode())
    assert _texts(session) == {"s1": "SELECT 2"}  # what the server has if it accepts it
    session.client(c.Sync(), c.Sync().encode())
    session.server(_frames(be.error("42P05", "exists").encode(), be.ready("I")))
    assert _texts(session) == {"s1": "SELECT * FROM items"}  # it refused the duplicate


@given(st.sampled_from(["DEALLOCATE s1", "deallocate ALL", "DISCARD /* x */ ALL",
                        "SELECT 1; DEALLOCATE PREPARE s1"]))  # fmt: skip
def test_sql_that_may_drop_prepared_statements_forgets_every_name(query: str) -> None:
    session = Session(PreparingPolicy(), default_schema="public", user="u1")
    parse = c.Parse("s1", "SELECT * FROM items")
    session.client(parse, parse.encode())
    session.client(c.Sync(), c.Sync().encode())
    session.server(_frames(b"1\x00\x00\x00\x04", be.ready("I")))
    session.client(c.Query(query), c.Query(query).encode())
    assert _texts(session) == {}
    bind = c.Bind("", "s1")
    out = session.client(bind, bind.encode())
    assert bind.encode() not in _sent(out)  # refused: not prepared through the broker


@given(st.text(max_size=80))
def test_touches_prepared_never_crashes(text: str) -> None:
    assert touches_prepared(text) in (True, False)


PREPARED_FORMS = ["PREPARE p AS SELECT 1", "DEALLOCATE p", "DEALLOCATE ALL", "DISCARD ALL",
                  "DISCARD PLANS", "deallocate prepare p"]  # fmt: skip


@given(
    st.sampled_from(PREPARED_FORMS),
    st.sampled_from(["", "SELECT 1; ", "/* c */ ", "-- c\n", "BEGIN;\n"]),
    st.booleans(),
)
def test_touches_prepared_finds_every_form(statement: str, before: str, lower: bool) -> None:
    assert touches_prepared(before + (statement.lower() if lower else statement))
    assert not touches_prepared(before + "SELECT 'prepare', \"deallocate\" FROM discard")
