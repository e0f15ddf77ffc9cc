"""The action-key index only ever skips rules that could not have matched.

For every kind, whenever a block matches a part, the part's key is among the block's keys
(or the block is unkeyed). And the indexed engine decides exactly like a linear scan.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.policy import context, engine
from tether.policy.actions import compile_http, compile_mcp, compile_sql, compile_ssh, part_keys
from tether.policy.errors import AmbiguousPath, PatternError
from tether.policy.httpmatch import canonicalize_path
from tether.policy.request import HttpPart, McpToolPart, SqlPart, SshCommandPart
from tether.policy.rules import AGENT
from tether.policy.sql import STATEMENT_CLASSES, SqlStatement

from .conftest import policies

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEGMENTS = st.sampled_from(["a", "b", "v1", "*", "**", "{id}", "inv-*", "", "%20", "x y"])


@SETTINGS
@given(
    st.lists(st.lists(SEGMENTS, min_size=1, max_size=4), min_size=1, max_size=3),
    st.lists(st.sampled_from(["a", "b", "v1", "inv-1", "x%20y", "", "7"]), max_size=5),
)
def test_http_keys_cover_matches(patterns: list[list[str]], path: list[str]) -> None:
    sources = ["/" + "/".join(p) for p in patterns]
    try:
        block = compile_http({"methods": ["*"], "paths": sources}, False)
        part = HttpPart("GET", canonicalize_path("/" + "/".join(path)))
    except (PatternError, AmbiguousPath):
        return
    keys = block.keys()
    if block.match(part) is not None and keys is not None:
        assert set(part_keys(part)) & keys


@SETTINGS
@given(
    st.lists(st.sampled_from(["ls **", "cat /x", "rm -f *", "grep *"]), min_size=1, max_size=3),
    st.lists(st.sampled_from(["ls", "cat", "rm", "grep", "-f", "/x", "y"]), min_size=1),
)
def test_ssh_keys_cover_matches(commands: list[str], argv: list[str]) -> None:
    block = compile_ssh({"commands": commands}, False)
    part = SshCommandPart(tuple(argv))
    keys = block.keys()
    if block.match(part) is not None:
        assert keys is not None and set(part_keys(part)) & keys


@SETTINGS
@given(st.lists(st.sampled_from(["a", "b*", "*c", "d"]), min_size=1, max_size=3), st.text())
def test_mcp_keys_cover_matches(tools: list[str], tool: str) -> None:
    block = compile_mcp({"tools": tools}, False)
    part = McpToolPart(tool)
    keys = block.keys()
    if block.match(part) is not None and keys is not None:
        assert set(part_keys(part)) & keys


CLASSES = st.sampled_from(sorted(STATEMENT_CLASSES))


@SETTINGS
@given(
    st.lists(CLASSES | st.just("*"), min_size=1, max_size=3),
    st.frozensets(CLASSES, min_size=1, max_size=3),
    st.booleans(),
    st.frozensets(st.sampled_from(["public.t", "s.u"]), max_size=2),
)
def test_sql_keys_cover_matches(
    statements: list[str], classes: frozenset[str], deny: bool, relations: frozenset[str]
) -> None:
    block = compile_sql({"statements": statements, "tables": ["public.*"]}, deny)
    stmt = SqlStatement("x", classes, relations, frozenset(), frozenset(), None, None)
    part = SqlPart(stmt)
    keys = block.keys()
    if block.match(part) is not None and keys is not None:
        assert set(part_keys(part)) & keys


RULES = """
rules:
  - id: r1
    effect: allow
    agents: [a1, a2]
    targets: [t1]
    http: {methods: [GET], paths: ["/v1/**"]}
  - id: r2
    effect: deny
    targets: ["t*"]
    http: {methods: ["*"], paths: ["/v1/admin/**"]}
  - id: r3
    effect: allow
    agents: {labels: {team: x}}
    http: {methods: [POST], paths: ["/{id}/x", "/v2/*"]}
  - id: r4
    effect: allow
    http: {methods: [GET], paths: ["/**"]}
    when: 'request.http.query != ""'
  - id: r5
    effect: allow
    approval: {approvers: [owner]}
    agents: [a2]
    http: {methods: [DELETE], paths: ["/v1/*"]}
"""


@SETTINGS
@given(
    st.sampled_from(["a1", "a2", "a3"]),
    st.sampled_from(["t1", "t2", "u"]),
    st.sampled_from(["GET", "POST", "DELETE"]),
    st.lists(st.sampled_from(["v1", "v2", "admin", "x", "7"]), max_size=4),
    st.sampled_from(["", "?q=1"]),
    st.sampled_from([{}, {"team": "x"}]),
)
def test_indexed_engine_equals_linear_scan(
    agent: str, target: str, method: str, path: list[str], query: str, labels: dict[str, str]
) -> None:
    ps = policies(RULES)
    req: dict[str, Any] = {
        "agent": {"id": agent, "labels": labels},
        "target": {"name": target},
        "action": {"http": {"method": method, "path": "/" + "/".join(path) + query}},
    }
    indexed = ps.decide(req)
    # The same decision with every index bypassed: all rules, deny first, no action keys.
    request = ps.normalize(req)
    who = context.Principal(AGENT, agent, labels)
    rules = sorted(
        (r for r in ps.rules if r.subject in ("agent", "any") and context.applies(r, who, request)),
        key=context.rule_order,
    )
    ev = engine._Evaluator(request, ps.clock)
    linear = ps._decide_part(ps.checks_of(rules), request.parts[0], request, ev)
    assert (indexed.decision, indexed.rule, indexed.reason) == (
        linear.decision, linear.rule, linear.reason,
    )  # fmt: skip


SELECTOR_RULES = """
rules:
  - id: s1
    effect: allow
    agents: ["bil*", exact-bot]
    targets: ["svc-1*", db]
    mcp: {tools: ["*"]}
  - id: s2
    effect: deny
    agents: {labels: {team: [red, blue]}}
    targets: {labels: {env: "*"}}
    mcp: {tools: ["drop*"]}
  - id: s3
    effect: allow
    targets: {labels: {pci: "false", env: prod}}
    mcp: {tools: [read, write]}
  - id: s4
    effect: allow
    agents: ["*-bot"]
    mcp: {tools: [read]}
  - id: s5
    effect: deny
    agents: [exact-bot]
    targets: ["*"]
    mcp: {tools: [write]}
"""

LABELS = st.dictionaries(
    st.sampled_from(["team", "env", "pci"]),
    st.sampled_from(["red", "blue", "green", "prod", "dev", "true", "false"]),
    max_size=3,
)


@SETTINGS
@given(
    st.sampled_from(["billing", "bil", "exact-bot", "x-bot", "other"]),
    LABELS,
    st.sampled_from(["svc-1", "svc-12", "svc-2", "db", "dbx", "s"]),
    LABELS,
    st.sampled_from(["read", "write", "drop_all", "list"]),
)
def test_selector_index_equals_linear_scan(
    agent: str,
    agent_labels: dict[str, str],
    target: str,
    target_labels: dict[str, str],
    tool: str,
) -> None:
    ps = policies(SELECTOR_RULES)
    req: dict[str, Any] = {
        "agent": {"id": agent, "labels": agent_labels},
        "target": {"name": target, "labels": target_labels},
        "action": {"mcp": {"tool": tool}},
    }
    indexed = ps.decide(req)
    request = ps.normalize(req)
    who = context.Principal(AGENT, agent, agent_labels)
    rules = sorted(
        (r for r in ps.rules if context.applies(r, who, request)), key=context.rule_order
    )
    ev = engine._Evaluator(request, ps.clock)
    linear = ps._decide_part(ps.checks_of(rules), request.parts[0], request, ev)
    assert (indexed.decision, indexed.rule, indexed.reason) == (
        linear.decision, linear.rule, linear.reason,
    )  # fmt: skip
