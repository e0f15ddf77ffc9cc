"""The per-context candidate cache and the action-key index are exact.

The candidate cache is keyed by names and compares labels and groups in full on a hit; it
keeps its own copies, so a caller that changes its dicts afterwards cannot change a cached
answer. HTTP rules are indexed by their first two literal path segments.
"""

from __future__ import annotations

from typing import Any

from tether.policy.actions import compile_http, part_keys
from tether.policy.httpmatch import canonicalize_path
from tether.policy.request import HttpPart

from .conftest import http_request, policies

RULES = """
rules:
  - id: team-x
    effect: allow
    agents: {labels: {team: x}}
    targets: {labels: {env: prod}}
    http: {methods: [GET], paths: ["/v1/orders/**"]}
  - id: users
    effect: allow
    agents: [bot]
    http: {methods: [GET], paths: ["/v1/users/{id}", "/v1"]}
"""


def test_labels_decide_and_a_caller_mutation_never_reaches_the_cache() -> None:
    ps = policies(RULES)
    labels = {"team": "x", "env": "prod"}
    target = {"env": "prod"}
    req: dict[str, Any] = http_request(
        "/v1/orders/7", agent="a", agent_labels=labels, target_labels=target
    )
    assert ps.decide(req).rule == "team-x"
    labels["team"] = "y"  # the same dict objects, changed in place
    assert ps.decide(req).reason == "default-deny"
    labels["team"] = "x"
    target["env"] = "dev"
    assert ps.decide(req).reason == "default-deny"
    target["env"] = "prod"
    assert ps.decide(req).rule == "team-x"


def test_labels_in_another_order_hit_the_same_entry() -> None:
    ps = policies(RULES)
    prod = {"env": "prod"}
    first = http_request(
        "/v1/orders/7", agent="a", agent_labels={"team": "x", "env": "p"}, target_labels=prod
    )
    second = http_request(
        "/v1/orders/8", agent="a", agent_labels={"env": "p", "team": "x"}, target_labels=prod
    )
    assert ps.decide(first).rule == ps.decide(second).rule == "team-x"
    assert len(ps._contexts) == 1


def test_two_segment_keys() -> None:
    ps = policies(RULES)
    assert ps.decide(http_request("/v1/users/7", agent="bot")).rule == "users"
    assert ps.decide(http_request("/v1", agent="bot")).rule == "users"
    assert ps.decide(http_request("/v1/users", agent="bot")).reason == "default-deny"
    block = compile_http({"methods": ["*"], "paths": ["/v1/orders/**", "/a", "/b/*/c"]}, False)
    assert block.keys() == {"v1/orders", "a", "b"}
    assert part_keys(HttpPart("GET", canonicalize_path("/v1/orders/7"))) == ("v1", "v1/orders")
    assert part_keys(HttpPart("GET", canonicalize_path("/"))) == ("",)
    assert compile_http({"methods": ["*"], "paths": ["/*/x"]}, False).keys() is None
