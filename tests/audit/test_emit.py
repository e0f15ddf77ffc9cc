"""The typed emitter on a real store: each method records the fields an investigation needs,
redacted, durably (committed when the method returns), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from tests.audit.conftest import AGENT, Trail
from tether.audit import store
from tether.audit.emit import Subject
from tether.audit.events import AuditEvent, EventError
from tether.policy import load_policies
from tether.policyfiles import PolicySource

SECRET = "hunter2-Sup3rS3cret-value"
POLICY = """
rules:
  - id: read-invoices
    effect: allow
    agents: [billing-bot]
    targets: [billing-api]
    http: {methods: [GET], paths: ["/v1/invoices/*"]}
  - id: alice-reads-invoices
    effect: allow
    users: [alice]
    targets: [billing-api]
    http: {methods: [GET], paths: ["/v1/invoices/*"]}
"""


async def stored(trail: Trail, seq: int) -> AuditEvent:
    async with trail.engine.connect() as conn:
        (event,) = await store.events_after(conn, seq - 1, limit=1)
    return event


async def raw_rows(trail: Trail) -> str:
    async with trail.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM audit_events"))).all()
    return repr(rows)


async def test_every_method_records_its_fields_and_is_committed_on_return(trail: Trail) -> None:
    a = trail.auditor
    seqs = [
        await a.session_start(AGENT, protocol="ssh", target="web-1", detail={"client": "ssh"}),
        await a.command(AGENT, target="web-1", command="systemctl restart app", exit_status=0,
                        bytes_out=120, duration_ms=15.5, decision="allow", rule="ops"),
        await a.emit(a.http_exchange_event(
            AGENT, target="billing-api", method="GET", path="/v1/invoices/7", status=200,
            request_headers={"Authorization": f"Bearer {SECRET}"}, bytes_in=10, bytes_out=2048,
            duration_ms=3.25,
        )),
        await a.sql_statement(AGENT, target="db", query=f"ALTER ROLE x PASSWORD '{SECRET}'",
                              database="app", rows=0, duration_ms=1.0),
        await a.file_transfer(AGENT, target="web-1", op="write", path="/srv/a", size=512,
                              sha256="ab" * 32),
        await a.mcp_call(AGENT, target="tools", tool="search",
                         arguments={"q": "x", "api_key": SECRET}),
        await a.token_issued(AGENT, jti="j-1", issued="access_token", scope=["billing-api"],
                             expires_at=datetime(2026, 11, 29, 13, 0, tzinfo=UTC),
                             grant_type="token-exchange", audience="tether"),
        await a.token_refused(Subject(source_ip="10.0.0.9"), reason="join token already used"),
        await a.revocation("admin-token:abc", kind="agent", value="billing-bot", reason="leak"),
        await a.admin_change("admin-token:abc", "agent.disable", "agent:billing-bot", "success"),
        await a.approval(AGENT, rule="prod-write", approver="carol", outcome="granted"),
        await a.session_end(AGENT, protocol="ssh", target="web-1", duration_ms=60000.0,
                            bytes_in=300, bytes_out=9000, reason="closed"),
    ]  # fmt: skip
    assert seqs == list(range(1, 13))
    # Each one is in the database already: committed before the method returned.
    events = [await stored(trail, seq) for seq in seqs]
    kinds = [e.kind for e in events]
    assert kinds == [
        "session.start", "ssh.command", "http.exchange", "sql.statement", "file.transfer",
        "mcp.call", "token.issued", "token.refused", "revocation", "admin.change", "approval",
        "session.end",
    ]  # fmt: skip
    command = events[1]
    assert (command.agent, command.runtime, command.task, command.session_id) == (
        "billing-bot", "k8s/prod/b-1", "T-118", "sess-1"
    )  # fmt: skip
    assert command.action == {"command": "systemctl restart app", "exit_status": 0}
    assert (command.decision, command.rule, command.bytes_out, command.duration_ms) == (
        "allow", "ops", 120, 15.5
    )  # fmt: skip
    assert events[2].action["request_headers"] == {"Authorization": "[REDACTED]"}
    assert events[3].action["query"] == "ALTER ROLE x PASSWORD '[REDACTED]'"
    assert events[4].bytes_in == 512 and events[4].bytes_out is None
    assert events[5].action["arguments"] == {"q": "x", "api_key": "[REDACTED]"}
    assert events[6].action["expires_at"] == "2026-11-29T13:00:00+00:00"
    assert (events[7].decision, events[7].reason, events[7].source_ip) == (
        "deny", "join token already used", "10.0.0.9"
    )  # fmt: skip
    assert (events[8].user, events[8].target) == ("admin-token:abc", "agent:billing-bot")
    assert events[9].action == {"name": "agent.disable", "outcome": "success"}
    assert (events[11].duration_ms, events[11].reason) == (60000.0, "closed")
    assert SECRET not in await raw_rows(trail)
    assert (await trail.verify()).ok


async def test_a_policy_decision_is_recorded_with_its_rule_and_version(trail: Trail) -> None:
    policies = load_policies([PolicySource("a.yaml", POLICY)])
    request = {
        "agent": {"id": "billing-bot"},
        "runtime": {"id": "rt-9"},
        "delegation": {"user": "alice", "groups": ["finance"]},
        "task": {"id": "T-7"},
        "target": {"name": "billing-api"},
        "action": {"http": {"method": "GET", "path": "/v1/invoices/7",
                            "headers": {"authorization": SECRET, "accept": "json"}}},
        "source_ip": "10.1.2.3",
    }  # fmt: skip
    decision = policies.decide(request)
    assert decision.decision == "allow"
    seq = await trail.auditor.decision(request, decision, duration_ms=0.2)
    event = await stored(trail, seq)
    assert (event.kind, event.agent, event.runtime, event.task, event.user) == (
        "decision", "billing-bot", "rt-9", "T-7", "alice"
    )  # fmt: skip
    assert (event.target, event.source_ip, event.decision, event.rule, event.reason) == (
        "billing-api", "10.1.2.3", "allow", "read-invoices", "allowed"
    )  # fmt: skip
    assert event.policy_version == decision.policy_version
    assert event.action["http"]["headers"] == {"authorization": "[REDACTED]", "accept": "json"}
    denied = policies.decide({**request, "agent": {"id": "someone"}})
    who = Subject(agent="someone", session_id="s-2", actor_chain=("orchestrator",))
    event = await stored(trail, await trail.auditor.decision(request, denied, who=who))
    assert (event.decision, event.reason, event.rule) == ("deny", "default-deny", None)
    assert (event.session_id, event.actor_chain) == ("s-2", ("orchestrator",))
    assert SECRET not in await raw_rows(trail)


async def test_emit_redacts_an_event_built_elsewhere(trail: Trail) -> None:
    built = AuditEvent(
        kind="approval",
        target=f"https://u:{SECRET}@host",
        reason=f"token={SECRET}",
        action={"password": SECRET},
        detail={"note": f"Bearer {SECRET}"},
    )
    event = await stored(trail, await trail.auditor.emit(built))
    assert event.target == "https://u:[REDACTED]@host"
    assert SECRET not in await raw_rows(trail)


def test_events_refuse_what_they_cannot_hold() -> None:
    with pytest.raises(EventError, match="unknown audit event kind"):
        AuditEvent(kind="login")
    with pytest.raises(EventError, match="timezone-aware"):
        AuditEvent(kind="decision", time=datetime(2026, 1, 1))
    with pytest.raises(EventError, match="rows must be a non-negative integer"):
        AuditEvent(kind="decision", rows=-1)
    with pytest.raises(EventError, match=r"action\.a\[1\]: a bytes is not a JSON value"):
        AuditEvent(kind="decision", action={"a": [1, b"x"]})
    with pytest.raises(EventError, match="not a JSON number"):
        AuditEvent(kind="decision", detail={"x": float("nan")})
    with pytest.raises(EventError, match="duration_ms must be finite"):
        AuditEvent(kind="decision", duration_ms=float("inf"))
    event = AuditEvent(kind="decision", action={"a": [1]})
    with pytest.raises(TypeError):
        event.action["a"] = 2  # type: ignore[index]
    with pytest.raises(AttributeError):
        event.kind = "x"  # type: ignore[misc]
