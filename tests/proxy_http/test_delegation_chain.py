"""A delegation chain through the HTTP broker is decided for every user of the chain.

alice delegates to ``bot`` (RFC 8693 token exchange at ``/oauth/token`` with her ID token);
that delegated token is the actor token of bob's delegation, so the chained token's ``sub``
is bob and its ``act`` names alice, then the agent. A real node, a real upstream, the real
token endpoint and a trusted OIDC issuer for the users' ID tokens.

Before the fix the policy request named bob (and bob's groups) only: a deny rule for alice,
or alice not being allowed the action at all, did not stop the chained token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from tests.proxy_ssh.harness import USER_ISSUER, USER_KEY, user_issuer
from tether.identity import exchange as ex
from tether.identity.claims import Claims
from tether.identity.dpop import make_proof

from .conftest import Agent, Harness
from .upstream import Upstream

POLICY = """
rules:
  - id: agent-reads
    effect: allow
    agents: [bot]
    http: {methods: [GET], paths: ["/v1/**"]}
  - id: finance-reads
    effect: allow
    groups: [finance]
    http: {methods: [GET], paths: ["/v1/**"]}
  - id: alice-no-payroll
    effect: deny
    users: [alice]
    http: {methods: ["*"], paths: ["/v1/payroll/**"]}
"""


@pytest.fixture
def node(tmp_path: Path, upstream: Upstream) -> Iterator[Harness]:
    made = Harness(tmp_path, POLICY)
    made.identity.issuers = user_issuer()  # the users' OIDC provider is trusted
    made.add_target("api", base_url=upstream.url)
    yield made
    made.stop()


def id_token(user: str, groups: list[str]) -> str:
    now = int(time.time())
    body = {"iss": USER_ISSUER, "aud": "tether", "sub": user, "iat": now, "exp": now + 600}
    return jwt.encode(
        {**body, "groups": groups}, USER_KEY, algorithm="EdDSA", headers={"kid": "u1"}
    )


def delegate(node: Harness, actor: Agent, user: str, groups: list[str]) -> Agent:
    """``actor``'s token delegated by ``user`` (with ``groups``), over the token endpoint."""
    url = node.url + "/oauth/token"
    form = {
        "grant_type": ex.GRANT_TYPE, "subject_token": id_token(user, groups),
        "subject_token_type": ex.ID_TOKEN, "actor_token": actor.token,
        "actor_token_type": ex.ACCESS_TOKEN, "task_id": "T-1", "task_purpose": "tests",
    }  # fmt: skip
    proof = make_proof(actor.key, "POST", url, now=time.time(), access_token=actor.token)
    answer = httpx.post(url, data=form, headers={"DPoP": proof})
    assert answer.status_code == 200, answer.text
    return Agent(actor.id, actor.key, answer.json()["access_token"], actor.base)


def chain(node: Harness, alice: list[str], bob: list[str]) -> Agent:
    """bob -> (alice -> bot)."""
    return delegate(node, delegate(node, node.agent(), "alice", alice), "bob", bob)


def get(node: Harness, agent: Agent, path: str) -> httpx.Response:
    url = f"{node.url}/t/api{path}"
    return httpx.get(url, headers=agent.headers("GET", url))


def claims_of(agent: Agent) -> Claims:
    return Claims.from_json(jwt.decode(agent.token, options={"verify_signature": False}))


def test_both_users_allowed_is_allowed(node: Harness, upstream: Upstream) -> None:
    agent = chain(node, ["finance"], ["finance"])
    claims = claims_of(agent)
    assert claims.delegators == ("bob", "alice")
    assert [(u.sub, u.groups) for u in claims.delegation_users] == [
        ("bob", ("finance",)),
        ("alice", ("finance",)),
    ]
    answer = get(node, agent, "/v1/items")
    assert answer.status_code == 200, answer.text
    assert upstream.seen[-1].target == "/v1/items"


def test_the_first_user_denied_by_a_rule_is_refused_naming_them(
    node: Harness, upstream: Upstream
) -> None:
    agent = chain(node, ["finance"], ["finance"])
    before = len(upstream.seen)
    answer = get(node, agent, "/v1/payroll/7")
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert (body["reason"], body["rule"]) == ("delegation-denied", "alice-no-payroll")
    assert "'alice'" in body["detail"]
    assert len(upstream.seen) == before
    (event,) = node.events("decision", target="api")
    assert (event.decision, event.reason, event.rule) == (
        "deny",
        "delegation-denied",
        "alice-no-payroll",
    )
    assert event.user == "bob" and "alice" in event.actor_chain
    assert "'alice'" in event.detail["detail"]


def test_the_first_user_not_allowed_at_all_is_refused(node: Harness, upstream: Upstream) -> None:
    agent = chain(node, ["ops"], ["finance"])
    before = len(upstream.seen)
    answer = get(node, agent, "/v1/items")
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert body["reason"] == "delegation-denied"
    assert body["detail"].endswith("user 'alice' is not allowed this action (default-deny)")
    assert len(upstream.seen) == before


def test_a_chained_token_issued_without_act_groups_gives_alice_no_groups(
    node: Harness, upstream: Upstream
) -> None:
    """A token of a version before act_groups: the earlier users count as group-less."""
    agent = chain(node, ["finance"], ["finance"])
    chained = claims_of(agent)
    old, claims = node.identity.tokens.issue(
        subject=chained.sub, task=chained.task, scope=chained.scope, runtime=chained.runtime,
        cnf=chained.cnf, act=chained.act, agent=chained.agent, groups=chained.groups,
        derived_from=chained.derived_from,
    )  # fmt: skip
    assert "act_groups" not in claims.to_json()
    before = len(upstream.seen)
    answer = get(node, Agent(agent.id, agent.key, old, agent.base), "/v1/items")
    assert answer.status_code == 403, answer.text
    assert answer.json()["reason"] == "delegation-denied"
    assert answer.json()["detail"].endswith(
        "user 'alice' is not allowed this action (default-deny)"
    )
    assert len(upstream.seen) == before
