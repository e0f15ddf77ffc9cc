"""The compiled per-rule checks and the shared patterns decide exactly as the rules do.

``PolicySet.decide`` walks compiled :data:`~tether.policy.context.Check` tuples found through
the indexes and the per-context cache. The reference here reads the :class:`Rule` objects
themselves, all of them, in deny-first order, with the spec's algorithm written out: the
two must give the same decision, rule and reason for every request, the same request being
decided twice (the second time from the caches) included.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.policy import context, engine
from tether.policy.actions import compile_http
from tether.policy.httpmatch import PathPattern, canonicalize_path
from tether.policy.model import (
    ALLOWED,
    APPROVAL_NEEDED,
    DEFAULT_DENY,
    DENIED_BY_RULE,
)
from tether.policy.request import HttpPart

from .conftest import policies

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

RULES = """
rules:
  - id: read
    effect: allow
    agents: [bot, "team-*"]
    http: {methods: [GET, HEAD], paths: ["/v1/orders/{id}", "/v1/orders/*/lines/**"]}
  - id: write
    effect: allow
    agents: {labels: {team: red}}
    targets: [api]
    http: {methods: [POST, PUT], paths: ["/v1/orders/{id}"]}
    approval: {approvers: ["group:leads"]}
  - id: purpose
    effect: allow
    http: {methods: ["*"], paths: ["/v2/**"]}
    when: task.purpose == "incident-response"
  - id: no-admin
    effect: deny
    http: {methods: ["*"], paths: ["/admin/**", "/v1/orders/*/delete"]}
  - id: prod-guard
    effect: deny
    targets: {labels: {env: prod}}
    http: {methods: [DELETE], paths: ["/v1/**"]}
    when: request.http.query.contains("force=true")
  - id: same-paths
    effect: allow
    agents: [bot]
    http: {methods: [GET], paths: ["/v1/orders/{id}", "/v2/**"]}
"""

SEGMENT = st.sampled_from(["v1", "v2", "orders", "7", "lines", "delete", "admin", "x"])


def reference(ps: Any, req: dict[str, Any]) -> tuple[str, str | None, str]:
    """The decision read from the rules themselves, without any index, cache or check."""
    request = ps.normalize(req)
    who = context.Principal("agent", request.agent_id, request.agent_labels)
    rules = sorted(
        (r for r in ps.rules if context.applies(r, who, request)), key=context.rule_order
    )
    ev = engine._Evaluator(request, ps.clock)
    pending = None
    for rule in rules:
        captures = rule.action.match(request.parts[0])
        if captures is None or (rule.when is not None and not ev.when(rule, captures)):
            continue
        if rule.deny:
            return ("deny", rule.id, DENIED_BY_RULE)
        if rule.approval is None or rule.id in request.approvals:
            return ("allow", rule.id, ALLOWED)
        pending = pending or rule
    if pending is not None:
        return ("approval_required", pending.id, APPROVAL_NEEDED)
    return ("deny", None, DEFAULT_DENY)


@SETTINGS
@given(
    st.sampled_from(["bot", "team-a", "other"]),
    st.sampled_from([{}, {"team": "red"}]),
    st.sampled_from(["api", "db"]),
    st.sampled_from([{}, {"env": "prod"}]),
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE"]),
    st.lists(SEGMENT, min_size=1, max_size=5),
    st.sampled_from(["", "?force=true", "?a=1"]),
    st.sampled_from([None, "incident-response", "other"]),
    st.sampled_from([[], ["write"], ["read"]]),
)
def test_checks_decide_as_the_rules_do(
    agent: str,
    agent_labels: dict[str, str],
    target: str,
    target_labels: dict[str, str],
    method: str,
    path: list[str],
    query: str,
    purpose: str | None,
    approvals: list[str],
) -> None:
    ps = policies(RULES)
    req: dict[str, Any] = {
        "agent": {"id": agent, "labels": agent_labels},
        "target": {"name": target, "labels": target_labels},
        "action": {"http": {"method": method, "path": "/" + "/".join(path) + query}},
    }
    if purpose is not None:
        req["task"] = {"id": "T-1", "purpose": purpose}
    if approvals:
        req["approvals"] = approvals
    expected = reference(ps, req)
    for _ in range(2):  # the second decision comes from the per-context cache
        d = ps.decide(req)
        assert (d.decision, d.rule, d.reason) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(["GET", "POST", "PUT", "*"]), min_size=1, max_size=3),
    st.lists(SEGMENT, min_size=1, max_size=4),
    st.lists(SEGMENT, min_size=1, max_size=4),
    st.sampled_from(["GET", "POST", "DELETE"]),
)
def test_shared_patterns_match_as_fresh_ones(
    methods: list[str], pattern: list[str], path: list[str], method: str
) -> None:
    """A block built from shared (cached) patterns matches exactly as a freshly built one."""
    source = "/" + "/".join([*pattern[:-1], "{id}" if pattern[-1] == "7" else pattern[-1]])
    block = compile_http({"methods": methods, "paths": [source, "/v1/**"]}, False)
    again = compile_http({"methods": list(reversed(methods)), "paths": [source, "/v1/**"]}, False)
    assert block.patterns[0] is again.patterns[0] and block.methods is again.methods
    part = HttpPart(method, canonicalize_path("/" + "/".join(path)))
    fresh = PathPattern.compile(source)
    expected = fresh.match(part.path) if method in methods or "*" in methods else None
    if expected is None and (method in methods or "*" in methods):
        expected = PathPattern.compile("/v1/**").match(part.path)
    assert block.match(part) == expected
