"""What a grant is bound to, attacked over the real API: another delegating user, another
runtime, a rule changed since the approval, and self-approval through a differently written
owner or delegating user. Each grant here is made by a human's vote over HTTP with a
personal token; the grant is then looked for the way every front-end does
(:meth:`ApprovalService.decide` with the request it authenticated)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.approvals.conftest import Api
from tests.approvals.helpers import POLICY, ssh_request
from tether.approvals.binding import grant_key
from tether.approvals.digest import ActionDigest
from tether.policy import PolicySource, load_policies

RESTART = "systemctl restart app"
# The delegating users must be allowed the action themselves (policy step 8).
PEOPLE = """
  - id: people-restart
    effect: allow
    users: [alice, carol, sam]
    targets: [web]
    ssh: {commands: ["systemctl restart *"]}
"""


def use_policy(api: Api, text: str) -> None:
    api.holder.replace(load_policies([PolicySource("approvals.yaml", text)]))


def on_behalf(user: str | None, runtime: str = "join/r1", task: str = "T-1") -> dict[str, Any]:
    extra: dict[str, Any] = {"runtime": {"id": runtime}}
    if user is not None:
        extra["delegation"] = {"user": user, "groups": []}
    return ssh_request(RESTART, task=task, **extra)


async def vote(api: Api, request_id: str, who: dict[str, str], how: str = "approve") -> Any:
    return await api.http.post(
        f"/v1/access-requests/{request_id}/{how}", json={"reason": "t"}, headers=who
    )


async def test_a_grant_does_not_cover_another_delegating_user(api: Api) -> None:
    use_policy(api, POLICY + PEOPLE)
    await api.agent("bot")
    carol = await api.human("carol", "sre")
    decision, for_alice = await api.approvals.decide(on_behalf("alice"))
    assert decision.decision == "approval_required" and for_alice is not None
    assert for_alice.delegation_user == "alice"
    assert (await vote(api, for_alice.id, carol)).json()["status"] == "approved"
    assert (await api.approvals.decide(on_behalf("alice")))[0].decision == "allow"

    # The same agent, task and action for carol: not what carol approved for alice.
    decision, for_carol = await api.approvals.decide(on_behalf("carol"))
    assert decision.decision == "approval_required" and for_carol is not None
    assert for_carol.id != for_alice.id and for_carol.delegation_user == "carol"
    refused = await vote(api, for_carol.id, carol)  # and carol may not approve her own
    assert refused.status_code == 403 and "caused" in refused.json()["detail"]
    # Nor the agent on its own account.
    assert (await api.approvals.decide(on_behalf(None)))[0].decision == "approval_required"


async def test_a_pending_request_of_one_delegating_user_is_not_anothers(api: Api) -> None:
    use_policy(api, POLICY + PEOPLE)
    await api.agent("bot")
    carol = await api.human("carol", "sre")
    _, by_alice = await api.approvals.decide(on_behalf("alice"))
    _, by_carol = await api.approvals.decide(on_behalf("carol"))
    assert by_alice is not None and by_carol is not None and by_alice.id != by_carol.id
    # carol approving alice's request does not let carol's own through.
    assert (await vote(api, by_alice.id, carol)).json()["status"] == "approved"
    assert (await api.approvals.decide(on_behalf("carol")))[0].decision == "approval_required"


async def test_a_grant_does_not_cover_another_runtime_and_dies_with_its_runtime(
    api: Api,
) -> None:
    await api.agent("bot")
    sam = await api.human("sam", "sre")
    _, pending = await api.approvals.decide(on_behalf(None, runtime="join/r1"))
    assert pending is not None
    assert (await vote(api, pending.id, sam)).json()["status"] == "approved"
    assert (await api.approvals.decide(on_behalf(None, runtime="join/r1")))[0].decision == "allow"
    other = await api.approvals.decide(on_behalf(None, runtime="join/r2"))
    assert other[0].decision == "approval_required"

    revoked = await api.http.post(
        "/v1/revocations",
        json={"kind": "runtime", "value": "join/r1", "reason": "pod compromised"},
        headers=api.admin,
    )
    assert revoked.status_code == 201, revoked.text
    shown = await api.http.get(f"/v1/access-requests/{pending.id}", headers=sam)
    assert shown.json()["grant"]["revoked"] is True
    digest = ActionDigest("ssh", pending.target, {}, pending.digest)
    assert not await api.approvals.held_approvals(
        "bot", "T-1", digest, ["restart"], runtime_id="join/r1"
    )


async def test_a_rule_wide_grant_does_not_follow_a_widened_rule(api: Api) -> None:
    bot = await api.agent("bot", owner="olivia")
    olivia = await api.human("olivia")
    asked = await api.as_agent(
        bot, "POST", "/v1/access-requests", json={"target": "db", "rule": "drop-table"}
    )
    assert asked.status_code == 202, asked.text
    runtime = asked.json()["runtime_id"]
    assert (await vote(api, asked.json()["id"], olivia)).json()["status"] == "approved"

    def drop(table: str) -> dict[str, Any]:
        return {**ssh_request(""), "runtime": {"id": runtime}, "target": {"name": "db"},
                "action": {"sql": {"query": f"DROP TABLE {table}"}}}  # fmt: skip

    assert (await api.approvals.decide(drop("public.a")))[0].decision == "allow"
    assert (await api.approvals.decide(drop("secret.a")))[0].decision == "deny"
    # An admin widens the rule to every schema: what olivia approved was the narrow rule.
    use_policy(api, POLICY.replace('tables: ["public.*"]', 'tables: ["*.*"]'))
    decision, again = await api.approvals.decide(drop("secret.a"))
    assert decision.decision == "approval_required" and again is not None
    assert (await api.approvals.decide(drop("public.a")))[0].decision == "approval_required"


async def test_a_grant_does_not_survive_a_stricter_approval(api: Api) -> None:
    await api.agent("bot")
    sam = await api.human("sam", "sre")
    _, pending = await api.approvals.decide(on_behalf(None))
    assert pending is not None
    assert (await vote(api, pending.id, sam)).json()["status"] == "approved"
    assert (await api.approvals.decide(on_behalf(None)))[0].decision == "allow"
    stricter = POLICY.replace(
        'approval: {approvers: ["group:sre"], valid_for: 10m}',
        'approval: {approvers: ["group:sre"], valid_for: 10m, count: 2}',
    )
    use_policy(api, stricter)
    decision, fresh = await api.approvals.decide(on_behalf(None))
    assert decision.decision == "approval_required" and fresh is not None
    assert fresh.required == 2


async def test_a_vote_on_a_request_of_a_changed_rule_is_refused_and_cancels_it(api: Api) -> None:
    await api.agent("bot")
    sam = await api.human("sam", "sre")
    _, pending = await api.approvals.decide(on_behalf(None))
    assert pending is not None and pending.required == 1
    use_policy(api, POLICY.replace("valid_for: 10m}", "valid_for: 10m, count: 2}"))
    late = await vote(api, pending.id, sam)
    assert late.status_code == 409 and "changed" in late.json()["detail"]
    shown = (await api.http.get(f"/v1/access-requests/{pending.id}", headers=sam)).json()
    assert shown["status"] == "cancelled" and shown["grant"] is None
    # The agent's next attempt raises a request under the rule as it is now.
    decision, fresh = await api.approvals.decide(on_behalf(None))
    assert decision.decision == "approval_required" and fresh is not None
    assert fresh.id != pending.id and fresh.required == 2


async def test_the_owner_is_excluded_however_their_name_was_written(api: Api) -> None:
    bot = await api.agent("bot", owner="Olivia")
    olivia = await api.human("olivia", "sre")  # the owner, in the approver group
    body = {"target": "web", "action": {"ssh": {"command": RESTART}}}
    pending = (await api.as_agent(bot, "POST", "/v1/access-requests", json=body)).json()
    refused = await vote(api, pending["id"], olivia)
    assert refused.status_code == 403 and "owner" in refused.json()["detail"]
    shown = (await api.http.get(f"/v1/access-requests/{pending['id']}", headers=olivia)).json()
    assert shown["status"] == "pending" and shown["approvals"] == 0


async def test_the_delegating_user_is_excluded_however_the_provider_wrote_them(
    api: Api,
) -> None:
    use_policy(api, POLICY + PEOPLE.replace("users: [alice, carol, sam]", "users: [Carol]"))
    await api.agent("bot")
    carol = await api.human("carol", "sre")
    decision, pending = await api.approvals.decide(on_behalf("Carol"))
    assert decision.decision == "approval_required" and pending is not None
    refused = await vote(api, pending.id, carol)
    assert refused.status_code == 403 and "caused" in refused.json()["detail"]


_IDS = st.none() | st.sampled_from(["a", "b", "A", "a\x00", ""])
_DIGESTS = st.none() | st.sampled_from(["0" * 64, "1" * 64])


@settings(max_examples=200, deadline=None)
@given(
    one=st.tuples(st.sampled_from(["bot", "bot2"]), st.sampled_from(["T-1", "T-2"]),
                  st.sampled_from(["restart", "drop-table"]), _DIGESTS, _IDS, _IDS),
    two=st.tuples(st.sampled_from(["bot", "bot2"]), st.sampled_from(["T-1", "T-2"]),
                  st.sampled_from(["restart", "drop-table"]), _DIGESTS, _IDS, _IDS),
)  # fmt: skip
def test_grant_keys_differ_whenever_what_they_bind_differs(
    one: tuple[Any, ...], two: tuple[Any, ...]
) -> None:
    rules = load_policies([PolicySource("approvals.yaml", POLICY)]).by_id

    def key(parts: tuple[Any, ...]) -> str:
        agent, task, rule, digest, runtime, delegation = parts
        return grant_key(agent, task, rules[rule], digest, runtime, delegation)

    assert (key(one) == key(two)) == (one == two)


def test_a_rule_definition_changes_its_keys_but_its_description_does_not() -> None:
    def rule(text: str) -> Any:
        return load_policies([PolicySource("approvals.yaml", text)]).by_id["restart"]

    base = rule(POLICY)
    described = rule(POLICY.replace("  - id: restart\n", "  - id: restart\n    description: x\n"))
    wider = rule(POLICY.replace('commands: ["systemctl restart *"]', 'commands: ["systemctl *"]'))
    keys = [grant_key("bot", "T", r, "0" * 64, None, None) for r in (base, described, wider)]
    assert keys[0] == keys[1] != keys[2]
