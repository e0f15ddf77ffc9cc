"""OCSF mapping: every kind to its class, the required attributes, the arithmetic, the details."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.audit.events import KINDS, AuditEvent
from tether.audit.ocsf import BASE_REQUIRED, KIND_CLASSES, OCSF_VERSION, REQUIRED, to_ocsf

T = datetime(2026, 11, 29, 12, 0, 0, 123000, tzinfo=UTC)
COMMON: dict[str, Any] = {
    "seq": 7,
    "time": T,
    "agent": "deploy-bot",
    "runtime": "rt-1",
    "task": "task-9",
    "session_id": "sess-1",
    "source_ip": "10.0.0.5",
    "policy_version": "sha256:abc",
    "rule": "allow-ops",
    "hash": "h" * 64,
    "prev_hash": "p" * 64,
}

# One event per kind, shaped as tether.audit.emit builds them, and the class and activity
# it must map to.
CASES: list[tuple[dict[str, Any], int, int]] = [
    ({"kind": "session.start", "action": {"protocol": "ssh"}, "target": "web-1",
      "decision": "allow"}, 4007, 1),
    ({"kind": "session.start", "action": {"protocol": "mcp"}, "target": "tools",
      "decision": "allow"}, 3003, 1),
    ({"kind": "session.end", "action": {"protocol": "ssh"}, "target": "web-1",
      "bytes_in": 10, "bytes_out": 20, "duration_ms": 1500.5, "reason": "closed"}, 4007, 2),
    ({"kind": "session.end", "action": {"protocol": "postgres"}, "target": "db"}, 3002, 2),
    ({"kind": "decision", "action": {"http": {"method": "GET", "path": "/x"}},
      "target": "api", "decision": "deny", "reason": "no rule"}, 3003, 1),
    ({"kind": "approval", "action": {"approver": "bob", "outcome": "granted"},
      "user": "alice", "rule": "prod-write"}, 3003, 1),
    ({"kind": "http.exchange", "action": {"method": "DELETE", "path": "/v1/items/3",
      "status": 204, "request_headers": {"authorization": "[redacted]"}}, "target": "api",
      "decision": "allow"}, 6003, 4),
    ({"kind": "http.exchange", "action": {"method": "get", "path": "/", "status": None},
      "target": "api"}, 6003, 2),
    ({"kind": "mcp.call", "action": {"tool": "search", "resource": None, "is_error": False,
      "arguments": {"q": "x"}}, "target": "mcp-1", "decision": "allow"}, 6003, 99),
    ({"kind": "mcp.call", "action": {"tool": None, "resource": "file:///a"},
      "target": "mcp-1", "decision": "allow"}, 6003, 2),
    ({"kind": "ssh.command", "action": {"command": "ls -la /srv", "exit_status": 0},
      "target": "web-1", "decision": "allow"}, 4007, 6),
    ({"kind": "ssh.command", "action": {"command": "rm -rf /", "exit_status": None},
      "target": "web-1", "decision": "deny"}, 4007, 5),
    ({"kind": "file.transfer", "action": {"op": "read", "path": "/srv/a.csv", "size": 42,
      "sha256": "ab" * 32}, "target": "web-1", "decision": "allow"}, 6006, 2),
    ({"kind": "file.transfer", "action": {"op": "write", "path": "/tmp/up", "size": None,
      "sha256": None}, "target": "web-1"}, 6006, 1),
    ({"kind": "file.transfer", "action": {"op": "rename", "path": "/a", "to": "/b"},
      "target": "web-1"}, 6006, 5),
    ({"kind": "sql.statement", "action": {"query": "SELECT * FROM t WHERE a = $1",
      "database": "app", "params": ["[redacted]"]}, "rows": 3, "target": "pg-main",
      "decision": "allow"}, 6005, 4),
    ({"kind": "sql.statement", "action": {"query": "delete from t", "database": None},
      "target": "pg"}, 6005, 7),
    ({"kind": "token.issued", "user": "alice", "actor_chain": ("deploy-bot",),
      "action": {"jti": "j1", "issued": "access_token", "scope": ["ssh:web-1"],
                 "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange"},
      "decision": "allow", "target": "tether"}, 3002, 1),
    ({"kind": "token.refused", "action": {"grant_type": "client_credentials"},
      "decision": "deny", "reason": "expired"}, 3002, 1),
    ({"kind": "revocation", "action": {"kind": "agent", "value": "bad-bot", "created": True},
      "user": "admin-token:a1", "target": "agent:bad-bot"}, 3001, 5),
    ({"kind": "revocation", "action": {"kind": "token", "value": "jti-1", "created": True},
      "target": "token:jti-1"}, 3004, 99),
    ({"kind": "admin.change", "action": {"name": "agent.create", "outcome": "success"},
      "target": "new-bot", "user": "admin-token:a1"}, 3001, 1),
    ({"kind": "admin.change", "action": {"name": "agent.offboard", "outcome": "success"},
      "target": "old-bot"}, 3001, 6),
    ({"kind": "admin.change", "action": {"name": "keys.rotate", "outcome": "error"}}, 3004, 3),
    ({"kind": "admin.change", "action": {"name": "audit.search", "outcome": "denied"}},
     3004, 2),
]  # fmt: skip


def _event(fields: dict[str, Any]) -> AuditEvent:
    return AuditEvent(**{**COMMON, **fields})


def _check_shape(result: dict[str, Any]) -> None:
    """What every OCSF event must have, and the arithmetic between its ids."""
    for name in BASE_REQUIRED + REQUIRED[result["class_uid"]]:
        assert name in result, f"{name} missing from class {result['class_uid']}"
    assert result["type_uid"] == result["class_uid"] * 100 + result["activity_id"]
    assert result["category_uid"] == result["class_uid"] // 1000
    assert result["metadata"]["version"] == OCSF_VERSION
    assert result["metadata"]["product"]["name"] == "Tether"
    assert result["metadata"]["product"]["vendor_name"]
    assert result["status_id"] in (1, 2)
    assert result["severity_id"] in range(7)
    json.dumps(result, allow_nan=False)


def test_every_kind_has_a_mapping() -> None:
    assert set(KIND_CLASSES) == KINDS
    assert {case[0]["kind"] for case in CASES} == KINDS


@pytest.mark.parametrize(("fields", "class_uid", "activity_id"), CASES)
def test_each_kind_maps_to_its_class(
    fields: dict[str, Any], class_uid: int, activity_id: int
) -> None:
    result = to_ocsf(_event(fields))
    _check_shape(result)
    assert (result["class_uid"], result["activity_id"]) == (class_uid, activity_id)
    assert result["time"] == 1_795_953_600_123  # epoch milliseconds
    meta = result["metadata"]
    assert meta["sequence"] == 7 and meta["correlation_uid"] == "sess-1"
    assert "policy_version:sha256:abc" in meta["labels"]
    assert f"rule:{fields.get('rule', 'allow-ops')}" in meta["labels"]
    assert result["src_endpoint"] == {"ip": "10.0.0.5", "uid": "rt-1"}
    assert result["actor"]["user"] == {
        "name": "deploy-bot", "uid": "deploy-bot", "type_id": 99, "type": "Service",
    }  # fmt: skip
    assert result["actor"]["session"] == {"uid": "sess-1"}
    assert result["unmapped"]["tether"]["kind"] == fields["kind"]
    assert result["unmapped"]["tether"]["hash"] == "h" * 64


def test_status_and_severity_follow_the_decision() -> None:
    def outcome(**fields: Any) -> tuple[int, int, str | None]:
        result = to_ocsf(_event({"kind": "decision", **fields}))
        return result["status_id"], result["severity_id"], result.get("status_detail")

    assert outcome(decision="allow") == (1, 1, "allow")
    assert outcome(decision="deny", reason="no rule") == (2, 3, "deny: no rule")
    assert outcome(decision="approval_required") == (2, 2, "approval_required")
    assert outcome(decision="error", reason="timeout") == (2, 4, "error: timeout")
    refused = to_ocsf(_event({"kind": "token.refused", "reason": "expired"}))
    assert (refused["status_id"], refused["status"]) == (2, "Failure")


def test_http_exchange_carries_the_request_and_response() -> None:
    fields, _, _ = CASES[6]
    result = to_ocsf(_event(fields))
    assert result["http_request"] == {"http_method": "DELETE", "url": {"path": "/v1/items/3"}}
    assert result["http_response"] == {"code": 204}
    assert result["api"]["operation"] == "DELETE"
    assert result["api"]["service"] == {"name": "api"}
    assert result["dst_endpoint"] == {"name": "api"}
    tether = result["unmapped"]["tether"]
    assert tether["action"]["request_headers"] == {"authorization": "[redacted]"}


def test_file_transfer_carries_path_size_and_sha256() -> None:
    result = to_ocsf(_event(CASES[12][0]))
    assert result["file"] == {
        "name": "a.csv",
        "path": "/srv/a.csv",
        "type_id": 1,
        "type": "Regular File",
        "size": 42,
        "hashes": [{"algorithm_id": 3, "algorithm": "SHA-256", "value": "ab" * 32}],
    }


def test_sql_carries_database_and_statement() -> None:
    result = to_ocsf(_event(CASES[15][0]))
    assert result["database"]["name"] == "app"
    assert result["query_info"] == {"query_string": "SELECT * FROM t WHERE a = $1"}
    assert result["unmapped"]["tether"]["rows"] == 3


def test_delegated_token_names_the_human_as_subject_and_the_agent_as_actor() -> None:
    result = to_ocsf(_event(CASES[17][0]))
    assert result["user"]["name"] == "alice" and result["user"]["type"] == "User"
    assert result["actor"]["user"]["name"] == "deploy-bot"
    assert result["actor"]["invoked_by"] == "deploy-bot"
    assert result["auth_protocol"] == "OAUTH 2.0"


def test_ssh_traffic_counts() -> None:
    result = to_ocsf(_event(CASES[2][0]))
    assert result["traffic"] == {"bytes_in": 10, "bytes_out": 20}
    assert result["connection_info"]["uid"] == "sess-1"
    assert result["duration"] == 1500
    assert result["status_detail"] == "closed"


def test_outcomes_of_admin_calls_approvals_and_failed_actions() -> None:
    def status(fields: dict[str, Any]) -> tuple[int, int]:
        result = to_ocsf(_event(fields))
        return result["status_id"], result["severity_id"]

    assert status(CASES[21][0]) == (1, 1)  # agent.create: success
    assert status(CASES[23][0]) == (2, 4)  # keys.rotate: error
    assert status(CASES[24][0]) == (2, 3)  # audit.search: denied (no admin token)
    assert status(CASES[5][0]) == (1, 1)  # approval granted
    failed_sql = {"kind": "sql.statement", "action": {"query": "x", "error": "42P01"},
                  "decision": "allow"}  # fmt: skip
    assert status(failed_sql) == (2, 2)
    revoked = to_ocsf(_event(CASES[20][0]))
    assert revoked["activity_name"] == "Revoke" and revoked["type_uid"] == 300499
    assert revoked["entity"] == {"name": "jti-1", "uid": "jti-1", "type": "token"}


def test_a_decision_describes_the_request_it_decided() -> None:
    result = to_ocsf(_event(CASES[4][0]))
    assert result["privileges"] == ["http GET /x"]


def test_an_event_of_tether_itself_has_a_system_actor() -> None:
    event = AuditEvent(kind="revocation", time=T, action={"kind": "token", "value": "j"})
    result = to_ocsf(event)
    assert result["actor"]["user"]["type"] == "System"
    assert result["src_endpoint"] == {"name": "unknown"}
    assert "sequence" not in result["metadata"]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
_ACTION_KEYS = st.sampled_from(
    ["protocol", "method", "path", "status", "command", "op", "direction", "size", "sha256",
     "query", "database", "error", "kind", "value", "name", "outcome", "tool", "resource",
     "is_error", "http", "ssh"]
)  # fmt: skip
_OPT_TEXT = st.none() | st.text(max_size=12)


@given(
    kind=st.sampled_from(sorted(KINDS)),
    action=st.dictionaries(_ACTION_KEYS, _JSON, max_size=6),
    detail=st.dictionaries(st.sampled_from(["status", "size", "protocol", "x"]), _JSON),
    decision=st.sampled_from([None, "allow", "deny", "approval_required", "error", "odd"]),
    agent=_OPT_TEXT,
    user=_OPT_TEXT,
    target=_OPT_TEXT,
    seq=st.none() | st.integers(1, 2**62),
)
def test_any_event_maps_to_a_well_formed_ocsf_event(
    kind: str,
    action: dict[str, Any],
    detail: dict[str, Any],
    decision: str | None,
    agent: str | None,
    user: str | None,
    target: str | None,
    seq: int | None,
) -> None:
    event = AuditEvent(
        kind=kind, time=T, action=action, detail=detail, decision=decision, agent=agent,
        user=user, target=target, seq=seq,
    )  # fmt: skip
    result = to_ocsf(event)
    _check_shape(result)
    assert result["metadata"]["uid"] == event.id
    if kind in ("admin.change", "approval"):
        return  # their status follows action.outcome
    failed = decision in ("deny", "approval_required", "error") or kind == "token.refused"
    if failed:
        assert (result["status_id"], result["status"]) == (2, "Failure")
    elif "error" not in action and action.get("is_error") is not True:
        assert (result["status_id"], result["status"]) == (1, "Success")


def test_time_is_the_exact_millisecond() -> None:
    """``int(timestamp() * 1000)`` lost a millisecond on some instants (a float product
    just under the whole number): this one came out as ...212."""
    moment = datetime(2038, 6, 4, 19, 5, 25, 213000, tzinfo=UTC)
    ocsf = to_ocsf(AuditEvent(kind="decision", time=moment))
    assert ocsf["time"] == ocsf["metadata"]["logged_time"] == 2159291125213


@given(st.datetimes(datetime(1970, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC)))
def test_time_is_whole_milliseconds_since_the_epoch(moment: datetime) -> None:
    since = moment - datetime(1970, 1, 1, tzinfo=UTC)
    expected = since.days * 86_400_000 + since.seconds * 1000 + since.microseconds // 1000
    assert to_ocsf(AuditEvent(kind="decision", time=moment))["time"] == expected
