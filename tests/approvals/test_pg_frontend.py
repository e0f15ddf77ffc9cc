"""Approvals through the real PostgreSQL broker, a real PostgreSQL and real clients (psycopg
and the raw wire): the refusal (SQLSTATE 42501) names the access request in DETAIL; once an
approver approves, exactly that statement runs (spelled any way that deparses the same), a
statement differing in one literal is still refused, a prepared statement follows the
grant, the grant expires on time and vanishes on revocation."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tests.proxy_pg.conftest import DATABASE, AgentKey, Broker, app_db, broker  # noqa: F401
from tests.proxy_pg.wire import Wire, errors, status
from tether.api.state import PolicyHolder
from tether.approvals.schema import grants
from tether.approvals.service import ApprovalService
from tether.policy import PolicySource, load_policies
from tether.proxy.pg.approvals import HeldGrant, SessionApprovals, needs_approvals
from tether.users.service import UserService
from tether.users.store import User

T = TypeVar("T")

POLICY = """
rules:
  - id: read
    effect: allow
    agents: [bot, bot2]
    sql: {statements: [select], tables: ["public.*", "pg_catalog.*"]}
  - id: notes-update
    effect: allow
    agents: [bot, bot2]
    sql: {statements: [update], tables: ["public.ap_notes"]}
    approval: {approvers: ["group:dba"], valid_for: 3s}
"""

TABLE = """
CREATE TABLE IF NOT EXISTS ap_notes (id int PRIMARY KEY, body text);
DELETE FROM ap_notes;
INSERT INTO ap_notes SELECT g, 'note ' || g FROM generate_series(1, 5) g;
GRANT ALL ON ap_notes TO app_user;
"""

APPROVED = "UPDATE ap_notes SET body = 'approved' WHERE id = 1"
DETAIL = re.compile(r"access request (ar_[0-9a-f]{24}) is pending .*status: /v1/access-requests/")


@dataclass
class Env:
    broker: Broker
    approvals: ApprovalService
    dba: User


@pytest.fixture
async def env(broker: Broker) -> AsyncIterator[Env]:  # noqa: F811
    broker.pg.psql(TABLE, database=DATABASE)
    broker.set_policy(POLICY)
    approvals = ApprovalService(
        broker.store.engine, lambda: broker.holder.current, broker.identity.sealer,
        auditor=broker.auditor, revoked=broker.identity.revoked,
    )  # fmt: skip
    broker.identity.revocation_listeners.append(approvals.on_revocation)
    broker.broker.services = dataclasses.replace(broker.broker.services, approvals=approvals)
    dba = await UserService(broker.store.engine, broker.identity.cipher).add(
        "dana", password=None, groups=["dba"]
    )
    yield Env(broker, approvals, dba)


async def _thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


def _refusal(conn: psycopg.Connection[Any], sql: str, **kw: Any) -> psycopg.errors.Error:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        conn.execute(sql, **kw)  # type: ignore[call-overload]
    return caught.value


def _request_id(error: psycopg.errors.Error) -> str:
    detail = error.diag.message_detail or ""
    match = DETAIL.search(detail)
    assert match is not None, detail
    return match.group(1)


def _body(on: Broker, note: int) -> str:
    return on.pg.psql(f"SELECT body FROM ap_notes WHERE id = {note}", database=DATABASE)


async def test_refusal_names_the_request_and_the_grant_is_exact(env: Env) -> None:
    broker, approvals = env.broker, env.approvals  # noqa: F811
    agent = await broker.agent()
    conn = await _thread(lambda: psycopg.connect(**broker.dsn(agent), autocommit=True))
    try:
        first = await _thread(lambda: _refusal(conn, APPROVED))
        assert "approval" in str(first) and "notes-update" in str(first)
        request_id = _request_id(first)
        again = await _thread(lambda: _refusal(conn, APPROVED))  # the same pending request
        assert _request_id(again) == request_id
        (pending,) = await approvals.search(status="pending")
        assert pending.id == request_id and pending.kind == "sql"
        assert pending.rule_id == "notes-update" and "id = 1" in pending.action["sql"]
        assert _body(broker, 1) == "note 1"

        await approvals.approve(request_id, env.dba, "fix the note")
        # The same statement, spelled differently (PostgreSQL deparses it the same), runs
        # in the same session right away: the retry finds the grant.
        await _thread(lambda: conn.execute("update ap_notes set BODY='approved'  where ID=1"))
        assert _body(broker, 1) == "approved"
        # One literal differs: another action, another request.
        other = await _thread(
            lambda: _refusal(conn, "UPDATE ap_notes SET body = 'approved' WHERE id = 2")
        )
        assert _request_id(other) != request_id
        assert _body(broker, 2) == "note 2"
        # A prepared statement of the approved text runs while the grant holds...
        for _ in range(3):
            await _thread(lambda: conn.execute(APPROVED, prepare=True))
        (grant_expiry,) = [
            g.expires_at for g in await _grants(broker, agent.id) if g.revoked_at is None
        ]
        await asyncio.sleep(max(0.0, (grant_expiry - datetime.now(UTC)).total_seconds()) + 0.2)
        # ...and, like the plain statement, is refused once the grant expired.
        prepared = await _thread(lambda: _refusal(conn, APPROVED, prepare=True))
        assert "notes-update" in str(prepared)
        # A Bind is decided without the driver: its request is raised by the session's
        # watcher (within a quarter second), and the next attempt names it.
        await asyncio.sleep(0.6)
        expired = await _thread(lambda: _refusal(conn, APPROVED, prepare=True))
        assert _request_id(expired) not in (request_id, _request_id(other))
    finally:
        await _thread(conn.close)


async def test_simple_protocol_refusal_detail(env: Env) -> None:
    broker = env.broker  # noqa: F811
    agent = await broker.agent()
    wire = await Wire.open(broker.port)
    try:
        assert status(await wire.login(broker.password(agent))) == "I"
        frames = await wire.query(APPROVED + ";")
        (error,) = errors(frames)
        assert error.get("C") == "42501" and status(frames) == "I"
        (pending,) = await env.approvals.search(status="pending")
        detail = error.get("D") or ""
        assert f"access request {pending.id} is pending" in detail
        assert f"/v1/access-requests/{pending.id}" in detail
        await env.approvals.approve(pending.id, env.dba, None)
        frames = await wire.query(APPROVED)
        assert errors(frames) == [] and status(frames) == "I"
        assert _body(broker, 1) == "approved"
    finally:
        wire.close()


async def test_revocation_cancels_requests_and_grants(env: Env) -> None:
    broker, approvals = env.broker, env.approvals  # noqa: F811
    agent = await broker.agent("bot2", task="T-2")
    conn = await _thread(lambda: psycopg.connect(**broker.dsn(agent), autocommit=True))
    try:
        approved_id = _request_id(await _thread(lambda: _refusal(conn, APPROVED)))
        await approvals.approve(approved_id, env.dba, None)
        await _thread(lambda: conn.execute(APPROVED))
        waiting = "UPDATE ap_notes SET body = 'x' WHERE id = 3"
        pending_id = _request_id(await _thread(lambda: _refusal(conn, waiting)))
        # The grants of the task are revoked in the store (as on another node): the live
        # session loses the grant within a second, the pending request is cancelled.
        affected = await approvals.on_revocation("task", "T-2", "incident")
        assert sorted(affected) == sorted([pending_id, approved_id])
        assert (await approvals.get(pending_id)).status == "cancelled"
        assert all(g.revoked_at is not None for g in await _grants(broker, "bot2"))
        await asyncio.sleep(1.5)
        refused = await _thread(lambda: _refusal(conn, APPROVED))
        assert "notes-update" in str(refused)
    finally:
        await _thread(conn.close)
    # A revocation through the identity service ends the task's sessions and logins.
    await broker.identity.revoke("task", "T-2", reason="incident", by="admin")
    with pytest.raises(psycopg.OperationalError):
        await _thread(lambda: psycopg.connect(**broker.dsn(agent), autocommit=True).close())


async def test_prepared_statement_refused_at_every_bind(env: Env) -> None:
    """A statement prepared while allowed, then refused at a Bind (the policy changed), stays
    refused at the next Bind too (the refused verdict is never forwarded)."""
    broker = env.broker  # noqa: F811
    agent = await broker.agent()
    conn = await _thread(lambda: psycopg.connect(**broker.dsn(agent), autocommit=True))
    read = "SELECT body FROM ap_notes WHERE id = 4"
    try:
        assert await _thread(lambda: conn.execute(read, prepare=True).fetchall()) == [("note 4",)]
        broker.set_policy(POLICY.replace("[select]", "[insert]"))
        for _ in range(2):
            refused = await _thread(lambda: _refusal(conn, read, prepare=True))
            assert "default-deny" in str(refused)
    finally:
        await _thread(conn.close)


async def test_no_approval_rules_no_lookups(env: Env) -> None:
    broker = env.broker  # noqa: F811
    plain = load_policies([PolicySource("p.yaml", POLICY.split("  - id: notes-update")[0])])
    assert not needs_approvals(plain) and needs_approvals(broker.holder.current)
    session = SessionApprovals(env.approvals, PolicyHolder(plain), {"agent": {"id": "bot"}})

    def fail(_text: str, _protocol: str) -> object:
        raise AssertionError("decided without an approval rule")

    from tether.proxy.pg import codec as c

    assert session.before(c.Query(APPROVED), fail) is None
    await session.refresh()
    assert session.grants == frozenset() and session.epoch().policies is plain


async def _grants(on: Broker, agent_id: str) -> list[Any]:
    async with on.store.engine.connect() as conn:
        query = select(grants).where(grants.c.agent_id == agent_id)
        return list((await conn.execute(query)).all())


_digest = st.text("0123456789abcdef", min_size=64, max_size=64)


@settings(max_examples=60, deadline=None)
@given(
    rule=st.sampled_from(["a", "b"]), asked_rule=st.sampled_from(["a", "b"]),
    key=_digest, asked=st.frozensets(_digest, max_size=2),
    expires=st.floats(-1e6, 1e6, allow_nan=False), now=st.floats(-1e6, 1e6, allow_nan=False),
)  # fmt: skip
def test_grant_covers_only_its_rule_key_and_time(
    rule: str, asked_rule: str, key: str, asked: frozenset[str], expires: float, now: float
) -> None:
    grant = HeldGrant(rule, key, expires)
    covered = grant.covers(asked_rule, asked, now)
    assert covered == (asked_rule == rule and key in asked and now < expires)


def test_grant_expiry_is_exact() -> None:
    base = time.time()
    grant = HeldGrant("r", "d" * 64, base + timedelta(seconds=3).total_seconds())
    assert grant.covers("r", frozenset({"d" * 64}), base + 2.999)
    assert not grant.covers("r", frozenset({"d" * 64}), base + 3.0)
