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

# One realistic event per kind, and the class and activity it must map to.
CASES: list[tuple[dict[str, Any], int, int]] = [
    ({"kind": "session.start", "action": {"protocol": "ssh"}, "target": "web-1",
      "decision": "allow"}, 4007, 1),
    ({"kind": "session.start", "action": {"protocol": "http"}, "target": "api",
      "decision": "allow"}, 3003, 1),
    ({"kind": "session.end", "action": {"protocol": "ssh"}, "target": "web-1",
      "bytes_in": 10, "bytes_out": 20}, 4007, 2),
    ({"kind": "session.end", "action": {"protocol": "pg"}, "target": "db"}, 3002, 2),
    ({"kind": "decision", "action": {"protocol": "http", "method": "GET", "path": "/x"},
      "decision": "deny", "reason": "no rule"}, 3003, 1),
    ({"kind": "approval", "action": {"operation": "grant"}, "user": "alice"}, 3003, 1),
    ({"kind": "http.exchange", "action": {"method": "DELETE", "path": "/v1/items/3",
      "host": "api.internal", "port": 443}, "detail": {"status": 204}, "target": "api",
      "decision": "allow"}, 6003, 4),
    ({"kind": "http.exchange", "action": {"method": "get", "path": "/"}, "target": "api"},
     6003, 2),
    ({"kind": "mcp.call", "action": {"method": "tools/call", "tool": "search"},
      "target": "mcp-1", "decision": "allow"}, 6003, 99),
    ({"kind": "ssh.command", "action": {"command": "ls -la /srv"}, "target": "web-1",
      "decision": "allow"}, 4007, 6),
    ({"kind": "ssh.command", "action": {"argv": ["rm", "-rf", "/"]}, "target": "web-1",
      "decision": "deny"}, 4007, 5),
    ({"kind": "file.transfer", "action": {"path": "/srv/a.csv", "direction": "download",
      "size": 42, "sha256": "ab" * 32}, "target": "web-1", "decision": "allow"}, 6006, 2),
    ({"kind": "file.transfer", "action": {"path": "/tmp/up", "direction": "upload"},
      "target": "web-1"}, 6006, 1),
    ({"kind": "sql.statement", "action": {"statement": "SELECT * FROM t WHERE a = ?",
      "database": "app"}, "rows": 3, "target": "pg-main", "decision": "allow"}, 6005, 4),
    ({"kind": "sql.statement", "action": {"statement": "delete from t"}, "target": "pg"},
     6005, 7),
    ({"kind": "token.issued", "user": "alice", "actor_chain": ("deploy-bot",)}, 3002, 1),
    ({"kind": "token.refused", "reason": "expired"}, 3002, 1),
    ({"kind": "revocation", "action": {"kind": "agent", "value": "bad-bot"}}, 3001, 5),
    ({"kind": "revocation", "action": {"kind": "token", "value": "jti-1"}}, 3004, 4),
    ({"kind": "admin.change", "action": {"entity": "agent", "operation": "create",
      "id": "new-bot"}, "user": "root-admin"}, 3001, 1),
    ({"kind": "admin.change", "action": {"entity": "signing_key", "operation": "rotate"}},
     3004, 3),
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
    assert "policy_version:sha256:abc" in meta["labels"] and "rule:allow-ops" in meta["labels"]
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
    assert result["http_request"] == {
        "http_method": "DELETE",
        "url": {"path": "/v1/items/3", "hostname": "api.internal"},
    }
    assert result["http_response"] == {"code": 204}
    assert result["api"]["operation"] == "DELETE"
    assert result["api"]["service"] == {"name": "api"}
    assert result["dst_endpoint"] == {"name": "api", "hostname": "api.internal", "port": 443}


def test_file_transfer_carries_path_size_and_sha256() -> None:
    result = to_ocsf(_event(CASES[11][0]))
    assert result["file"] == {
        "name": "a.csv",
        "path": "/srv/a.csv",
        "type_id": 1,
        "type": "Regular File",
        "size": 42,
        "hashes": [{"algorithm_id": 3, "algorithm": "SHA-256", "value": "ab" * 32}],
    }


def test_sql_carries_database_and_statement() -> None:
    result = to_ocsf(_event(CASES[13][0]))
    assert result["database"]["name"] == "app"
    assert result["query_info"] == {"query_string": "SELECT * FROM t WHERE a = ?"}
    assert result["unmapped"]["tether"]["rows"] == 3


def test_delegated_token_names_the_human_as_subject_and_the_agent_as_actor() -> None:
    result = to_ocsf(_event(CASES[15][0]))
    assert result["user"]["name"] == "alice" and result["user"]["type"] == "User"
    assert result["actor"]["user"]["name"] == "deploy-bot"
    assert result["actor"]["invoked_by"] == "deploy-bot"
    assert result["auth_protocol"] == "OAUTH 2.0"


def test_ssh_traffic_counts() -> None:
    result = to_ocsf(_event(CASES[2][0]))
    assert result["traffic"] == {"bytes_in": 10, "bytes_out": 20}
    assert result["connection_info"]["uid"] == "sess-1"


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
    ["protocol", "method", "path", "host", "port", "command", "argv", "direction", "size",
     "sha256", "statement", "database", "kind", "value", "entity", "operation", "id", "tool"]
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
    assert result["status_id"] == (2 if decision in ("deny", "approval_required", "error")
                                   or kind == "token.refused" else 1)  # fmt: skip
