"""The broker's fast paths keep every decision and every audit guarantee.

* Trailing terminators are trimmed before deciding (:mod:`tether.proxy.pg.deciding`): the
  verdict matches the real engine's on the text as sent, and never allows what it denies.
* A pipelining client's statements read at once share one group commit
  (:meth:`tether.proxy.pg.connection.Pump._run`): each is still audited, in order, before
  the server answers it.
* The decided event's action is built once per statement shape and shared.
* A session's decisions are cached per text only while the policy set, the agent's labels
  are unchanged and no rule has a ``when`` condition (:class:`SessionPolicy`).
* The sessions of one token share its liveness checks (:class:`LiveChecks`).
"""

from __future__ import annotations

import asyncio
import textwrap
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.api.state import PolicyHolder
from tether.identity.errors import TokenRevoked
from tether.policy import PolicySource, load_policies
from tether.policy.model import Decision
from tether.proxy.pg import codec as c
from tether.proxy.pg.backend import T_READY
from tether.proxy.pg.deciding import Decider
from tether.proxy.pg.live import LiveChecks
from tether.proxy.pg.policy import SessionPolicy

from .conftest import POLICY, Broker
from .test_enforcement import BYPASSES, _session
from .wire import rows

_POLICIES = load_policies([PolicySource("p.yaml", textwrap.dedent(POLICY))])
_BASE = {
    "agent": {"id": "bot", "labels": {}},
    "runtime": {"id": "rt-1", "labels": {}},
    "task": {"id": "T-1", "purpose": "testing"},
    "scope": {"targets": ["app"]},
    "target": {"name": "app", "labels": {}},
}


class EnginePolicy:
    """The real policy engine behind the session's Policy interface."""

    def decide(self, query: str, default_schema: str, shape: object = None) -> Decision:
        request = dict(_BASE, action={"sql": {"query": query, "database": "broker_app"}})
        return _POLICIES.decide(request, default_schema=default_schema)

    def current(self) -> object:
        return _POLICIES


_QUERIES = [
    "SELECT * FROM items WHERE id = 1",
    "SELECT * FROM secrets",
    "SELECT * FROM items -- a comment",
    "SELECT * FROM items /* unterminated",
    "SELECT 'unterminated",
    "SELECT E'abc\\'",
    'SELECT "unterminated',
    "SELECT 1; DELETE FROM secrets",
    "DELETE FROM secrets; SELECT 1",
    "SELECT * FROM items -- ; DELETE FROM secrets",
    "INSERT INTO items VALUES (1, 'a;b')",
    "SET search_path = vault; SELECT * FROM items",
    "",
    *BYPASSES,
]
_SUFFIXES = st.text(alphabet=" \t\r\n;", max_size=6)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(_QUERIES), _SUFFIXES)
def test_trimmed_decision_matches_the_engine_on_the_text_as_sent(query: str, suffix: str) -> None:
    text = query + suffix
    if not text.strip(" \t\r\n;"):
        return  # the session forwards an empty query without deciding it
    verdict = Decider(EnginePolicy(), default_schema="public", user="u").decide(text, "simple")
    engine = EnginePolicy().decide(text, "public")
    assert engine.allowed or not verdict.decision.allowed, (text, verdict.decision, engine)
    if "search_path" not in text:  # a SET widens the schemas: stricter than one decision
        assert verdict.decision.allowed == engine.allowed, (text, verdict.decision, engine)
    if len(verdict.records) == 1:
        assert verdict.records[0].size == len(text)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="SELECT *FROMitemsecrt;'\"-/\\ \n$1", max_size=40), _SUFFIXES)
def test_trimming_never_turns_a_deny_into_an_allow(query: str, suffix: str) -> None:
    text = query + suffix
    if not text.strip(" \t\r\n;"):
        return
    verdict = Decider(EnginePolicy(), default_schema="public", user="u").decide(text, "simple")
    if verdict.decision.allowed:
        assert EnginePolicy().decide(text, "public").allowed, text


async def test_pipelined_queries_share_a_commit_and_stay_in_order(broker: Broker) -> None:
    wire = await _session(broker)
    queries = [f"SELECT id FROM items WHERE id = {n};" for n in range(1, 7)]
    batches = broker.auditor.log.batches
    wire.send(b"".join(c.Query(q).encode() for q in queries))
    answered = []
    for _ in queries:
        answered.append(rows(await wire.until({T_READY})))
    assert answered == [[[str(n)]] for n in range(1, 7)]
    assert broker.auditor.log.batches - batches < len(queries)  # grouped, not one each
    decided = [e for e in await broker.events("sql.statement") if e["action"]["phase"] == "decided"]
    assert [e["action"]["query"] for e in decided[-6:]] == ["SELECT id FROM items WHERE id = ?"] * 6
    seqs = [e["seq"] for e in decided[-6:]]
    assert seqs == sorted(seqs)
    fingerprints = {e["action"]["fingerprint"] for e in decided[-6:]}
    assert len(fingerprints) == 1
    wire.close()
    completed = await broker.wait_for("sql.statement", count=len(decided) + 1)
    results = [
        r for e in completed if e["action"]["phase"] == "completed" for r in e["action"]["results"]
    ]
    assert [r["seq"] for r in results[-6:]] == seqs


async def test_a_denied_statement_in_a_pipeline_is_not_run(broker: Broker) -> None:
    wire = await _session(broker)
    wire.send(
        c.Query("SELECT 1;").encode()
        + c.Query("DELETE FROM secrets;").encode()
        + c.Query("SELECT count(*) FROM secrets;").encode()
    )
    first = await wire.until({T_READY})
    second = await wire.until({T_READY})
    await wire.until({T_READY})
    assert rows(first) == [["1"]]
    assert any(kind == ord("E") and b"42501" in body for kind, body, _raw in second)
    assert broker.pg.psql("SELECT count(*) FROM secrets", database="broker_app").strip() == "1"
    wire.close()


def _session_policy(text: str, labels: dict[str, str] | None = None) -> tuple[Any, Any]:
    holder = PolicyHolder(load_policies([PolicySource("p.yaml", textwrap.dedent(text))]))
    base = dict(_BASE, agent={"id": "bot", "labels": labels or {}})
    services = SimpleNamespace(policies=holder)  # the only part SessionPolicy reads
    return SessionPolicy(services, base, "broker_app"), holder  # type: ignore[arg-type]


LABELLED = """
rules:
  - id: prod-readers
    effect: allow
    agents: {labels: {env: prod}}
    sql: {statements: [select], tables: ["public.items"]}
"""
TIMED = """
rules:
  - id: short-queries
    effect: allow
    agents: [bot]
    sql: {statements: [select], tables: ["public.items"]}
    when: 'request.sql.query.size() < 40'
"""


def test_cached_decisions_follow_the_policy_set_and_the_labels() -> None:
    policy, holder = _session_policy(LABELLED, {"env": "prod"})
    query = "SELECT * FROM items"
    first = policy.decide(query, "public")
    assert first.allowed and policy.decide(query, "public") == first
    assert len(policy._cache) == 1  # served from the cache the second time
    policy.set_labels("bot", {"env": "dev"})  # labels changed: decided again
    assert not policy.decide(query, "public").allowed
    policy.set_labels("bot", {"env": "prod"})
    assert policy.decide(query, "public").allowed
    holder.replace(load_policies([PolicySource("p.yaml", "rules: []\n")]))  # a new set
    assert not policy.decide(query, "public").allowed


def test_no_cache_when_a_rule_has_a_condition() -> None:
    policy, _ = _session_policy(TIMED)
    short = "SELECT * FROM items"
    assert policy.decide(short, "public").allowed
    assert policy.decide(short, "public").allowed
    assert not policy._cache  # a condition may read the clock: nothing is cached
    assert not policy.decide(short + " WHERE id = 1 AND name = 'abc'", "public").allowed


async def test_live_checks_are_shared_per_token_and_errors_reach_everyone() -> None:
    calls: list[str] = []
    gate = asyncio.Event()
    now = [0.0]

    async def check(claims: Any) -> None:
        calls.append(claims.jti)
        await gate.wait()
        if claims.jti == "revoked":
            raise TokenRevoked("the token was revoked")

    live = LiveChecks(check, fresh_for=0.2, clock=lambda: now[0])
    token = SimpleNamespace(jti="t1", agent_id="bot")
    revoked = SimpleNamespace(jti="revoked", agent_id="bot")
    waiting = [asyncio.create_task(live.check(token)) for _ in range(8)]  # type: ignore[arg-type]
    failing = [asyncio.create_task(live.check(revoked)) for _ in range(3)]  # type: ignore[arg-type]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*waiting)
    outcomes = await asyncio.gather(*failing, return_exceptions=True)
    assert all(isinstance(o, TokenRevoked) for o in outcomes)
    assert sorted(calls) == ["revoked", "t1"]  # one check per token for eleven sessions
    await live.check(token)  # type: ignore[arg-type]
    assert len(calls) == 2  # fresh: reused
    now[0] = 0.3
    await live.check(token)  # type: ignore[arg-type]
    assert len(calls) == 3  # stale: checked again
    with pytest.raises(TokenRevoked):
        await live.check(revoked)  # type: ignore[arg-type]


_TEMPLATES = [
    "SELECT name FROM {t} WHERE id = {v}",
    "SELECT * FROM {t} WHERE name = '{v}' AND id > {v}",
    "UPDATE {t} SET name = '{v}' WHERE id = {v}",
    "DELETE FROM {t} WHERE id = {v}",
    "INSERT INTO {t} VALUES ({v}, '{v}')",
    "SELECT count(*) FROM {t} WHERE id = {v}",
    "SELECT pg_read_file('{v}') FROM {t}",
    "TRUNCATE {t}",
    "SELECT * FROM {t} WHERE id = {v} FOR UPDATE",
]
_TABLES = ["items", "public.items", "secrets", "vault.items", "pgbench_accounts", '"items"']


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_TEMPLATES),
            st.sampled_from(_TABLES),
            st.integers(min_value=-5, max_value=10**6),
            st.sampled_from(["", ";", " ;\n"]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_shape_cached_decisions_match_the_engine(
    queries: list[tuple[str, str, int, str]],
) -> None:
    """Texts of one shape share a decision; every one is the engine's own for the text."""
    policy, _ = _session_policy(POLICY)
    decider = Decider(policy, default_schema="public", user="u")
    for template, table, value, end in queries:
        text = template.format(t=table, v=value) + end
        verdict = decider.decide(text, "simple")
        engine = EnginePolicy().decide(text.rstrip(" \t\r\n;"), "public")
        assert verdict.decision == engine, (text, verdict.decision, engine)


def test_one_engine_call_per_shape() -> None:
    policy, _ = _session_policy(POLICY)
    decider = Decider(policy, default_schema="public", user="u")
    for value in range(20):
        assert decider.decide(f"SELECT name FROM items WHERE id = {value};", "simple").read_only
    assert len(policy._cache) == 1
    assert not decider.decide("SELECT name FROM secrets WHERE id = 3", "simple").decision.allowed
    assert len(policy._cache) == 2
