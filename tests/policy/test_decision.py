"""Spec sections 3 and 4: the decision algorithm, scope, approvals, delegation, composition."""

from __future__ import annotations

import pytest

from .conftest import http_request, policies, request

BASE = """
rules:
  - id: read-invoices
    effect: allow
    agents: [billing-bot, "finance-*"]
    targets: [billing-api]
    http: {methods: [GET, HEAD], paths: ["/v1/invoices/{id}", "/v1/customers/*/invoices/**"]}
  - id: no-drafts
    effect: deny
    http: {methods: ["*"], paths: ["/v1/invoices/draft"]}
  - id: refunds
    effect: allow
    agents: [billing-bot]
    http: {methods: [POST], paths: ["/v1/refunds"]}
    approval: {approvers: ["group:finance-leads"], valid_for: 30m}
"""


@pytest.fixture(scope="module")
def ps():  # type: ignore[no-untyped-def]
    return policies(BASE)


def test_allow(ps) -> None:  # type: ignore[no-untyped-def]
    d = ps.decide(http_request("/v1/invoices/7?expand=lines"))
    assert (d.decision, d.rule, d.reason) == ("allow", "read-invoices", "allowed")


def test_default_deny(ps) -> None:  # type: ignore[no-untyped-def]
    d = ps.decide(http_request("/v1/payments"))
    assert (d.decision, d.rule, d.reason) == ("deny", None, "default-deny")


def test_deny_wins_over_allow(ps) -> None:  # type: ignore[no-untyped-def]
    d = ps.decide(http_request("/v1/invoices/draft"))
    assert (d.decision, d.rule, d.reason) == ("deny", "no-drafts", "denied-by-rule")


def test_deny_wins_whatever_the_file_order() -> None:
    allow = "rules:\n  - id: a\n    effect: allow\n    http: {methods: [GET], paths: [/x]}\n"
    deny = "rules:\n  - id: d\n    effect: deny\n    http: {methods: [GET], paths: [/x]}\n"
    req = http_request("/x")
    assert policies(allow, deny).decide(req).rule == "d"
    assert policies(deny, allow).decide(req).rule == "d"


def test_approval_required_then_allowed_when_held(ps) -> None:  # type: ignore[no-untyped-def]
    d = ps.decide(http_request("/v1/refunds", "POST"))
    assert (d.decision, d.rule, d.reason) == ("approval_required", "refunds", "approval-needed")
    d = ps.decide(http_request("/v1/refunds", "POST", approvals=["refunds"]))
    assert (d.decision, d.rule, d.reason) == ("allow", "refunds", "allowed")
    d = ps.decide(http_request("/v1/refunds", "POST", approvals=["other-rule"]))
    assert d.decision == "approval_required"


def test_allow_without_approval_beats_approval_required() -> None:
    ps = policies(
        BASE + "  - id: refunds-small\n    effect: allow\n"
        "    http: {methods: [POST], paths: [/v1/refunds]}\n"
    )
    d = ps.decide(http_request("/v1/refunds", "POST"))
    assert (d.decision, d.rule) == ("allow", "refunds-small")


def test_out_of_scope(ps) -> None:  # type: ignore[no-untyped-def]
    d = ps.decide(http_request("/v1/invoices/7", scope={"targets": ["hr-*"]}))
    assert (d.decision, d.reason) == ("deny", "out-of-scope")
    d = ps.decide(http_request("/v1/invoices/7", scope={"targets": ["billing-*"]}))
    assert d.decision == "allow"
    d = ps.decide(http_request("/v1/invoices/7", scope={"targets": []}))
    assert d.reason == "out-of-scope"


def test_subject_and_target_must_match(ps) -> None:  # type: ignore[no-untyped-def]
    assert ps.decide(http_request(agent="finance-reporter")).decision == "allow"
    assert ps.decide(http_request(agent="hr-bot")).reason == "default-deny"
    assert ps.decide(http_request(target="billing-api-2")).reason == "default-deny"


@pytest.mark.parametrize(
    "bad",
    [
        None, [], "x", {},
        {"agent": {"id": "a"}, "target": {"name": "t"}},
        {"agent": {"id": ""}, "target": {"name": "t"}, "action": {"mcp": {"tool": "x"}}},
        {"agent": {"id": "a"}, "target": {"name": "t"}, "action": {"mcp": {"tool": "x"}},
         "bogus": 1},
        {"agent": {"id": "a"}, "target": {"name": "t"},
         "action": {"mcp": {"tool": "x"}, "http": {"method": "GET", "path": "/"}}},
        {"agent": {"id": "a"}, "target": {"name": "t"}, "action": {"ftp": {}}},
        {"agent": {"id": "a", "labels": {"x": 1}}, "target": {"name": "t"},
         "action": {"mcp": {"tool": "x"}}},
        {"agent": {"id": "a"}, "target": {"name": "t"}, "action": {"mcp": {"tool": "x"}},
         "time": "yesterday"},
        {"agent": {"id": "a"}, "target": {"name": "t"}, "action": {"mcp": {"tool": "x"}},
         "time": "2026-11-29T10:00:00"},
        {"agent": {"id": "a"}, "target": {"name": "t"},
         "action": {"http": {"method": "G ET", "path": "/"}}},
        {"agent": {"id": "a"}, "target": {"name": "t"}, "action": {"ssh": {"shell": False}}},
        {"agent": {"id": "a"}, "target": {"name": "t"}, "action": {"ssh": {"forward": "x"}}},
        {"agent": {"id": "a"}, "target": {"name": "t"},
         "action": {"files": {"op": "chmod", "path": "/a"}}},
        {"agent": {"id": "a"}, "target": {"name": "t"}, "action": {"mcp": {"tool": "x"}},
         "delegation": {"groups": ["g"]}},
    ],
)  # fmt: skip
def test_invalid_requests_are_denied_not_raised(ps, bad) -> None:  # type: ignore[no-untyped-def]
    d = ps.decide(bad)
    assert (d.decision, d.reason, d.rule) == ("deny", "invalid-request", None)
    assert d.detail


# --- CEL `when` (spec 4 and 6) ------------------------------------------------------------------

CEL = """
rules:
  - id: close
    effect: allow
    http: {methods: [GET], paths: ["/v1/invoices/{id}"]}
    when: 'task.purpose == "month-end-close" && request.http.params.id.startsWith("7")'
  - id: no-nights
    effect: deny
    http: {methods: ["*"], paths: ["/**"]}
    when: 'time.getHours() >= 22'
"""


def test_when_sees_task_params_and_time() -> None:
    ps = policies(CEL)
    day = "2026-11-29T10:00:00Z"
    ok = http_request("/v1/invoices/71", task={"purpose": "month-end-close"}, time=day)
    assert ps.decide(ok).decision == "allow"
    assert ps.decide(dict(ok, task={"purpose": "audit"})).reason == "default-deny"
    assert ps.decide(http_request("/v1/invoices/81", task=ok["task"], time=day)).reason == (
        "default-deny"
    )
    night = dict(ok, time="2026-11-29T23:00:00Z")
    assert ps.decide(night).rule == "no-nights"


def test_when_errors_fail_closed() -> None:
    ps = policies(
        """
        rules:
          - id: allow-if
            effect: allow
            http: {methods: [GET], paths: ["/a"]}
            when: 'task.purpose == "x"'
          - id: deny-if
            effect: deny
            http: {methods: [GET], paths: ["/b"]}
            when: 'task.ticket.startsWith("SEC-")'
          - id: allow-b
            effect: allow
            http: {methods: [GET], paths: ["/b"]}
          - id: nonbool
            effect: allow
            http: {methods: [GET], paths: ["/c"]}
            when: 'task.purpose'
        """
    )
    # Missing field: the allow rule does not match ...
    assert ps.decide(http_request("/a")).reason == "default-deny"
    # ... and the deny rule does.
    d = ps.decide(http_request("/b", task={"purpose": "x"}))
    assert (d.decision, d.rule) == ("deny", "deny-if")
    assert ps.decide(http_request("/b", task={"ticket": "OPS-1"})).decision == "allow"
    # A non-boolean result is an error too.
    assert ps.decide(http_request("/c", task={"purpose": "x"})).reason == "default-deny"


def test_runtime_selector_and_on_behalf_of() -> None:
    ps = policies(
        """
        rules:
          - id: prod-only
            effect: allow
            runtimes: {labels: {env: prod}}
            on_behalf_of: none
            mcp: {tools: ["search_*"]}
        """
    )
    req = request("mcp", {"tool": "search_docs", "arguments": {}})
    assert ps.decide(req).reason == "default-deny"  # no runtime: selector cannot match
    prod = dict(req, runtime={"id": "k8s/prod/x", "labels": {"env": "prod"}})
    assert ps.decide(prod).decision == "allow"
    staging = dict(req, runtime={"id": "k8s/stg/x", "labels": {"env": "staging"}})
    assert ps.decide(staging).reason == "default-deny"
    delegated = dict(prod, delegation={"user": "alice"})
    assert ps.decide(delegated).decision == "deny"


# --- delegation as intersection (spec 4.8) ------------------------------------------------------

DELEGATION = """
rules:
  - id: agent-reads
    effect: allow
    agents: [helper]
    on_behalf_of: {groups: [finance]}
    http: {methods: [GET], paths: ["/v1/**"]}
  - id: agent-writes
    effect: allow
    agents: [helper]
    http: {methods: [POST], paths: ["/v1/**"]}
  - id: finance-reads
    effect: allow
    groups: [finance]
    http: {methods: [GET], paths: ["/v1/invoices/**"]}
  - id: alice-writes
    effect: allow
    users: [alice]
    http: {methods: [POST], paths: ["/v1/invoices/**"]}
  - id: nobody-deletes
    effect: deny
    http: {methods: [DELETE], paths: ["/**"]}
  - id: humans-delete
    effect: allow
    users: ["*"]
    http: {methods: [DELETE], paths: ["/**"]}
"""


def test_delegation_is_the_intersection() -> None:
    ps = policies(DELEGATION)
    alice = {"user": "alice", "groups": ["finance"]}
    bob = {"user": "bob", "groups": ["finance"]}
    mallory = {"user": "mallory", "groups": ["sales"]}

    def d(method: str, path: str, who: dict[str, object] | None):  # type: ignore[no-untyped-def]
        extra = {"delegation": who} if who else {}
        return ps.decide(http_request(path, method, agent="helper", **extra))

    # Both allowed: allow, named by the agent's rule.
    assert (d("GET", "/v1/invoices/1", alice).rule, d("GET", "/v1/invoices/1", alice).decision) == (
        "agent-reads",
        "allow",
    )
    # Agent allowed, user not: delegation-denied.
    r = d("GET", "/v1/payroll/1", alice)
    assert (r.decision, r.reason) == ("deny", "delegation-denied")
    r = d("POST", "/v1/invoices/1", bob)
    assert (r.decision, r.reason) == ("deny", "delegation-denied")
    assert d("POST", "/v1/invoices/1", alice).decision == "allow"
    # User allowed, agent not (on_behalf_of excludes sales): the agent's deny stands.
    r = d("GET", "/v1/invoices/1", mallory)
    assert (r.decision, r.reason) == ("deny", "default-deny")
    # Human rules never apply to the agent itself.
    assert d("GET", "/v1/invoices/1", None).reason == "default-deny"
    # A subject-less deny binds humans as well as agents.
    r = d("DELETE", "/v1/invoices/1", alice)
    assert (r.decision, r.rule) == ("deny", "nobody-deletes")


def test_delegation_user_deny_rule_is_named() -> None:
    ps = policies(
        DELEGATION + "  - id: no-bob\n    effect: deny\n    users: [bob]\n"
        "    http: {methods: ['*'], paths: ['/**']}\n"
    )
    r = ps.decide(http_request("/v1/invoices/1", "POST", agent="helper",
                               delegation={"user": "bob", "groups": []}))  # fmt: skip
    assert (r.decision, r.reason, r.rule) == ("deny", "delegation-denied", "no-bob")


# --- composite actions (spec 4, last paragraph) --------------------------------------------------


def test_most_restrictive_part_wins() -> None:
    ps = policies(
        """
        rules:
          - id: ls
            effect: allow
            ssh: {commands: ["ls **", "grep **"]}
          - id: restart
            effect: allow
            ssh: {commands: ["systemctl restart nginx"]}
            approval: {approvers: [owner]}
          - id: no-rm
            effect: deny
            ssh: {commands: ["rm **"]}
        """
    )

    def decide(command: str):  # type: ignore[no-untyped-def]
        return ps.decide(request("ssh", {"command": command}))

    assert decide("ls -la | grep x").decision == "allow"
    r = decide("ls && systemctl restart nginx")
    assert (r.decision, r.rule) == ("approval_required", "restart")
    r = decide("systemctl restart nginx; rm -rf /")
    assert (r.decision, r.rule) == ("deny", "no-rm")
    r = decide("ls; cat /etc/shadow")
    assert (r.decision, r.reason) == ("deny", "default-deny")
    r = ps.decide(request("ssh", {"command": "ls && systemctl restart nginx"},
                          approvals=["restart"]))  # fmt: skip
    assert r.decision == "allow"


def test_engine_bug_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    ps = policies(BASE)
    from tether.policy import context

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(context, "applies", boom)
    d = ps.decide(http_request("/v1/invoices/7"))
    assert (d.decision, d.reason) == ("deny", "invalid-request")
    assert "internal error" in (d.detail or "")
