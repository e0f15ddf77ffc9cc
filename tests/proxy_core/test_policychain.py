"""Delegation chains are decided for every user of the chain (tether.policychain).

bob's delegation extended a token alice had delegated: the token's ``sub`` is bob, its
``act`` names alice and then the agent. Real policy sets (the loader and the engine), real
claims. Before the fix the request named bob only: alice's rules never applied.
"""

from __future__ import annotations

import textwrap
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether import policychain
from tether.identity.claims import Actor, Claims, Confirmation, Delegator, Runtime, Task
from tether.identity.errors import TokenInvalid
from tether.policy import PolicySet
from tether.policy.loader import PolicySource, load_policies
from tether.proxy.core import policy_request

RULES = """
rules:
  - id: agent-reads
    effect: allow
    agents: [bot]
    http: {methods: [GET], paths: ["/v1/**"]}
  - id: agent-deletes
    effect: allow
    agents: [bot]
    http: {methods: [DELETE], paths: ["/v1/**"]}
    approval: {approvers: ["group:leads"]}
  - id: finance-reads
    effect: allow
    groups: [finance]
    http: {methods: [GET, DELETE], paths: ["/v1/**"]}
  - id: alice-no-payroll
    effect: deny
    users: [alice]
    http: {methods: ["*"], paths: ["/v1/payroll/**"]}
  - id: bot-for-alice-no-audit
    effect: deny
    agents: [bot]
    on_behalf_of: {users: [alice]}
    http: {methods: ["*"], paths: ["/v1/audit/**"]}
"""


def load(text: str) -> PolicySet:
    return load_policies([PolicySource("p.yaml", textwrap.dedent(text))])


def chained(
    bob: tuple[str, ...] = ("finance",),
    alice: tuple[str, ...] | None = ("finance",),
    *,
    first: str = "alice",
) -> Claims:
    """bob -> (first -> bot); ``alice=None``: a token issued before act_groups existed."""
    act_groups = () if alice is None else (Delegator(first, alice),)
    return Claims(
        iss="http://t", aud="tether", sub="bob", jti="j2", iat=0, nbf=0, exp=10,
        task=Task("T-1", "close"), scope=("*",), runtime=Runtime("rt-1"),
        cnf=Confirmation(jkt="x"), act=Actor(first, Actor("bot")), agent="bot",
        groups=bob, act_groups=act_groups,
    )  # fmt: skip


class _Target:
    name = "api"
    labels = MappingProxyType({"env": "test"})


def request_of(claims: Claims, method: str, path: str) -> dict[str, Any]:
    action = {"http": {"method": method, "path": path}}
    return policy_request(claims, {}, _Target(), action)  # type: ignore[arg-type]


def test_the_request_of_a_chain_names_every_user_with_their_groups() -> None:
    request = request_of(chained(("ops",), ("finance",)), "GET", "/v1/x")
    assert request["delegation"] == {
        "user": "bob",
        "groups": ["ops"],
        "chain": [{"user": "alice", "groups": ["finance"]}],
    }


def test_both_users_allowed_is_allowed() -> None:
    decision = policychain.decide(load(RULES), request_of(chained(), "GET", "/v1/items"))
    assert (decision.decision, decision.rule) == ("allow", "agent-reads")


def test_an_earlier_user_denied_by_a_rule_is_delegation_denied_naming_them() -> None:
    policies = load(RULES)
    request = request_of(chained(), "GET", "/v1/payroll/7")
    decision = policychain.decide(policies, request)
    assert (decision.decision, decision.reason) == ("deny", "delegation-denied")
    assert decision.rule == "alice-no-payroll"
    assert decision.detail is not None and "'alice'" in decision.detail
    # bob alone (what the request said before the fix) may:
    assert policies.decide(policychain.single(request)).decision == "allow"


def test_an_earlier_user_not_allowed_at_all_is_denied() -> None:
    decision = policychain.decide(load(RULES), request_of(chained(alice=("ops",)), "GET", "/v1/x"))
    assert (decision.decision, decision.reason, decision.rule) == (
        "deny",
        "delegation-denied",
        None,
    )
    assert decision.detail == "user 'alice' is not allowed this action (default-deny)"


def test_the_agent_refused_for_an_earlier_user_names_that_user() -> None:
    decision = policychain.decide(load(RULES), request_of(chained(), "GET", "/v1/audit/1"))
    assert (decision.decision, decision.reason) == ("deny", "delegation-denied")
    assert decision.rule == "bot-for-alice-no-audit"
    assert decision.detail is not None
    assert decision.detail.startswith("user 'alice' of the delegation chain is not allowed")
    assert "denied-by-rule" in decision.detail


def test_the_outermost_user_refused_is_the_engines_own_answer() -> None:
    policies = load(RULES)
    decision = policychain.decide(policies, request_of(chained(bob=()), "GET", "/v1/x"))
    assert decision.detail == "user 'bob' is not allowed this action (default-deny)"


def test_a_token_without_act_groups_gives_earlier_users_no_groups() -> None:
    claims = chained(alice=None)
    assert claims.delegation_users == (Delegator("bob", ("finance",)), Delegator("alice"))
    decision = policychain.decide(load(RULES), request_of(claims, "GET", "/v1/x"))
    assert (decision.reason, decision.detail) == (
        "delegation-denied",
        "user 'alice' is not allowed this action (default-deny)",
    )


def test_approval_required_for_a_chain_and_the_approval_held() -> None:
    policies = load(RULES)
    request = request_of(chained(), "DELETE", "/v1/items/1")
    decision = policychain.decide(policies, request)
    assert (decision.decision, decision.rule) == ("approval_required", "agent-deletes")
    held = policychain.decide(policies, {**request, "approvals": ["agent-deletes"]})
    assert (held.decision, held.rule) == ("allow", "agent-deletes")
    # an approval never lifts an earlier user's deny
    payroll = {**request_of(chained(), "DELETE", "/v1/payroll/1"), "approvals": ["agent-deletes"]}
    assert policychain.decide(policies, payroll).reason == "delegation-denied"


def test_approval_required_from_an_earlier_user_only() -> None:
    policies = load(
        """
        rules:
          - id: for-bob
            effect: allow
            agents: [bot]
            on_behalf_of: {users: [bob]}
            http: {methods: [GET], paths: ["/**"]}
          - id: for-alice-with-approval
            effect: allow
            agents: [bot]
            on_behalf_of: {users: [alice]}
            http: {methods: [GET], paths: ["/**"]}
            approval: {approvers: ["user:carol"]}
          - id: people
            effect: allow
            users: ["*"]
            http: {methods: [GET], paths: ["/**"]}
        """
    )
    request = request_of(chained(), "GET", "/x")
    decision = policychain.decide(policies, request)
    assert (decision.decision, decision.rule) == ("approval_required", "for-alice-with-approval")
    assert policies.decide(policychain.single(request)).decision == "allow"  # bob alone
    held = {**request, "approvals": ["for-alice-with-approval"]}
    assert policychain.decide(policies, held).decision == "allow"


def test_the_engine_alone_refuses_a_chained_request() -> None:
    """A caller that forgot tether.policychain fails closed, never decides for bob only."""
    decision = load(RULES).decide(request_of(chained(), "GET", "/v1/items"))
    assert (decision.decision, decision.reason) == ("deny", "invalid-request")


@pytest.mark.parametrize(
    "chain",
    [[], "alice", [{"user": 1}], [{"user": "a", "x": 1}], [{"user": "a"}] * 9, ["alice"]],
)
def test_a_malformed_chain_is_an_invalid_request(chain: object) -> None:
    request = request_of(chained(), "GET", "/v1/items")
    request["delegation"]["chain"] = chain
    decision = policychain.decide(load(RULES), request)
    assert (decision.decision, decision.reason) == ("deny", "invalid-request")


def test_without_a_chain_the_engine_decides_alone() -> None:
    policies = load(RULES)
    single = Claims(
        iss="http://t", aud="tether", sub="alice", jti="j1", iat=0, nbf=0, exp=10,
        task=Task("T-1", "close"), scope=("*",), runtime=Runtime("rt-1"),
        cnf=Confirmation(jkt="x"), act=Actor("bot"), agent="bot", groups=("finance",),
    )  # fmt: skip
    request = request_of(single, "GET", "/v1/payroll/1")
    assert "chain" not in request["delegation"]
    assert policychain.single(request) is request
    assert policychain.decide(policies, request) == policies.decide(request)


# --- the claim ---------------------------------------------------------------------------


def test_act_groups_round_trip_and_are_checked_against_act() -> None:
    claims = chained(("ops",), ("finance", "leads"))
    doc = claims.to_json()
    assert doc["act_groups"] == [{"sub": "alice", "groups": ["finance", "leads"]}]
    assert Claims.from_json(doc) == claims
    for bad in (
        [{"sub": "carol", "groups": []}],  # not the user of act
        [{"sub": "alice", "groups": []}, {"sub": "bot", "groups": []}],  # the agent is no user
        [{"sub": "alice"}],
        [{"sub": "alice", "groups": "finance"}],
        [{"sub": "alice", "groups": [1]}],
        {"sub": "alice", "groups": []},
        [{"sub": "alice", "groups": []}] * 9,
    ):
        with pytest.raises(TokenInvalid, match="act_groups"):
            Claims.from_json({**doc, "act_groups": bad})
    old = {k: v for k, v in doc.items() if k != "act_groups"}
    assert Claims.from_json(old).delegation_users[1] == Delegator("alice", ())


# --- the property ------------------------------------------------------------------------

USERS = ("alice", "bob", "carol")
GROUPS = ("g1", "g2")
PATHS = ("/a", "/b")
SEVERITY = {"allow": 0, "approval_required": 1, "deny": 2}


@st.composite
def rules(draw: st.DrawFn) -> str:
    lines = ["rules:"]
    for index in range(draw(st.integers(0, 6))):
        effect = draw(st.sampled_from(["allow", "deny"]))
        lines += [f"  - id: r{index}", f"    effect: {effect}"]
        subject = draw(st.sampled_from(["agent", "user", "group", "any"]))
        if subject == "agent":
            lines.append("    agents: [bot]")
            who = draw(st.sampled_from(["any", "none", "user", "group"]))
            if who == "none":
                lines.append("    on_behalf_of: none")
            elif who == "user":
                lines.append(f"    on_behalf_of: {{users: [{draw(st.sampled_from(USERS))}]}}")
            elif who == "group":
                lines.append(f"    on_behalf_of: {{groups: [{draw(st.sampled_from(GROUPS))}]}}")
        elif subject == "user":
            lines.append(f"    users: [{draw(st.sampled_from(USERS))}]")
        elif subject == "group":
            lines.append(f"    groups: [{draw(st.sampled_from(GROUPS))}]")
        paths = draw(st.lists(st.sampled_from([*PATHS, "/*"]), min_size=1, max_size=2))
        lines.append(f"    http: {{methods: [GET], paths: [{', '.join(paths)}]}}")
        if effect == "allow" and draw(st.booleans()):
            lines.append('    approval: {approvers: ["user:x"]}')
        if draw(st.booleans()):
            lines.append("    when: 'delegation.user != \"carol\"'")
    return "\n".join(lines) + "\n" if len(lines) > 1 else "rules: []\n"


chain_users = st.lists(
    st.tuples(st.sampled_from(USERS), st.lists(st.sampled_from(GROUPS), max_size=2, unique=True)),
    min_size=2,
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    text=rules(),
    users=chain_users,
    path=st.sampled_from(PATHS),
    approvals=st.lists(st.sampled_from(["r0", "r1", "r2", "r3"]), max_size=2),
)
def test_a_chain_never_gets_more_than_any_of_its_users(
    text: str, users: list[tuple[str, list[str]]], path: str, approvals: list[str]
) -> None:
    policies = load(text)
    (user, groups), *rest = users
    request: dict[str, Any] = {
        "agent": {"id": "bot"},
        "target": {"name": "api"},
        "action": {"http": {"method": "GET", "path": path}},
        "delegation": {
            "user": user,
            "groups": groups,
            "chain": [{"user": u, "groups": g} for u, g in rest],
        },
        "approvals": approvals,
    }
    chain = policychain.decide(policies, request)
    for one_user, one_groups in users:
        alone = policies.decide({**request, "delegation": {"user": one_user, "groups": one_groups}})
        assert SEVERITY[chain.decision] >= SEVERITY[alone.decision], (one_user, alone, chain)
        if alone.decision == "deny":
            assert chain.decision == "deny"
    if chain.decision == "deny" and chain.reason == "delegation-denied":
        assert chain.detail is not None
        assert any(f"user {u!r}" in chain.detail for u, _ in users)
