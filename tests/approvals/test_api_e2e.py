"""Approvals end to end over real HTTP on loopback: an agent asks with its DPoP token, humans
approve with personal tokens, and the front-end interface (``held_approvals``/``decide``)
yields the grant for exactly the approved action until it expires."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.approvals.conftest import Api
from tests.approvals.helpers import ssh_request
from tether.approvals.digest import ActionDigest, action_digest

RESTART = {"ssh": {"command": "systemctl restart app"}}


async def ask(api: Api, agent: Any, action: dict[str, Any], target: str = "web") -> Any:
    body = {"target": target, "action": action, "reason": "deploy 42"}
    return await api.as_agent(agent, "POST", "/v1/access-requests", json=body)


def digest_of(command: str, agent: str = "bot") -> ActionDigest:
    return action_digest(ssh_request(command, agent=agent))


async def test_ask_approve_hold_exactly_then_expire(api: Api) -> None:
    bot = await api.agent("bot")
    sam = await api.human("sam", "sre")
    asked = await ask(api, bot, RESTART)
    assert asked.status_code == 202, asked.text
    pending = asked.json()
    assert pending["status"] == "pending" and pending["rule"] == "restart"
    assert pending["reason"] == "deploy 42" and pending["action"] == {
        "command": "systemctl restart app"
    }
    assert asked.headers["location"] == pending["status_url"]
    path = f"/v1/access-requests/{pending['id']}"

    waiting = asyncio.create_task(api.as_agent(bot, "GET", path + "?wait=20"))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # the long poll holds while pending
    approved = await api.http.post(path + "/approve", json={"reason": "ok"}, headers=sam)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved" and approved.json()["grant"]["revoked"] is False
    polled = await asyncio.wait_for(waiting, 5)
    assert polled.json()["status"] == "approved"

    runtime = pending["runtime_id"]
    assert runtime is not None  # the agent's, from its token
    held = await api.approvals.held_approvals(
        "bot", "T-1", digest_of("systemctl restart app"), ["restart"], runtime_id=runtime
    )
    assert held == {"restart"}
    assert not await api.approvals.held_approvals(
        "bot", "T-1", digest_of("systemctl restart db"), ["restart"], runtime_id=runtime
    )
    assert not await api.approvals.held_approvals(
        "bot", "T-2", digest_of("systemctl restart app"), ["restart"], runtime_id=runtime
    )
    on_runtime = {"runtime": {"id": runtime}}
    decision, _ = await api.approvals.decide(ssh_request("systemctl restart app", **on_runtime))
    assert decision.decision == "allow" and decision.rule == "restart"
    decision, other = await api.approvals.decide(ssh_request("systemctl restart db", **on_runtime))
    assert decision.decision == "approval_required" and other is not None

    again = await ask(api, bot, RESTART)  # asking again while granted: nothing to ask
    assert again.status_code == 200 and again.json()["status"] == "not-needed"
    assert again.json()["decision"]["decision"] == "allow"

    api.clock.advance(10 * 60)
    assert not await api.approvals.held_approvals(
        "bot", "T-1", digest_of("systemctl restart app"), ["restart"], runtime_id=runtime
    )
    decision, renewed = await api.approvals.decide(
        ssh_request("systemctl restart app", **on_runtime)
    )
    assert decision.decision == "approval_required" and renewed is not None
    assert renewed.id != pending["id"]


async def test_self_approval_and_non_humans_refused(api: Api) -> None:
    bot = await api.agent("bot", owner="olivia")
    olivia = await api.human("olivia", "sre")  # the agent's owner, in the approver group
    pending = (await ask(api, bot, RESTART)).json()
    path = f"/v1/access-requests/{pending['id']}/approve"
    refused = await api.http.post(path, json={}, headers=olivia)
    assert refused.status_code == 403 and "owner" in refused.json()["detail"]
    by_admin_token = await api.http.post(path, json={}, headers=api.admin)
    assert by_admin_token.status_code == 403 and "signed-in user" in by_admin_token.json()["detail"]
    anonymous = await api.http.post(path, json={})
    assert anonymous.status_code == 401
    by_agent = await api.as_agent(bot, "POST", path, json={})
    assert by_agent.status_code == 401
    outsider = await api.human("otto", "finance")
    assert (await api.http.post(path, json={}, headers=outsider)).status_code == 403
    shown = await api.http.get(f"/v1/access-requests/{pending['id']}", headers=olivia)
    assert shown.json()["status"] == "pending" and shown.json()["approvals"] == 0


async def test_two_of_many_and_deny(api: Api) -> None:
    bot = await api.agent("bot")
    fay, carol = await api.human("fay", "finance"), await api.human("carol")
    action = {"http": {"method": "POST", "path": "/v1/invoices/7"}}
    pending = (await ask(api, bot, action, target="billing")).json()
    assert pending["required_approvals"] == 2
    path = f"/v1/access-requests/{pending['id']}"
    first = await api.http.post(path + "/approve", json={"reason": "1"}, headers=fay)
    assert first.json()["status"] == "pending" and first.json()["approvals"] == 1
    twice = await api.http.post(path + "/approve", json={"reason": "2"}, headers=fay)
    assert twice.status_code == 409
    done = await api.http.post(path + "/approve", json={}, headers=carol)
    assert done.json()["status"] == "approved"
    assert sorted(v["user"] for v in done.json()["votes"]) == ["carol", "fay"]

    denied_ask = (
        await ask(api, bot, {"http": {"method": "POST", "path": "/v1/invoices/8"}}, "billing")
    ).json()
    no = await api.http.post(
        f"/v1/access-requests/{denied_ask['id']}/deny", json={"reason": "no"}, headers=carol
    )
    assert no.json()["status"] == "denied" and no.json()["decided_reason"] == "no"
    late = await api.http.post(
        f"/v1/access-requests/{denied_ask['id']}/approve", json={}, headers=fay
    )
    assert late.status_code == 409


async def test_revocation_cancels_pending_and_grants(api: Api) -> None:
    bot = await api.agent("bot")
    sam = await api.human("sam", "sre")
    granted = (await ask(api, bot, RESTART)).json()
    await api.http.post(f"/v1/access-requests/{granted['id']}/approve", json={}, headers=sam)
    waiting = (await ask(api, bot, {"ssh": {"command": "systemctl restart db"}})).json()
    revoked = await api.http.post(
        "/v1/revocations",
        json={"kind": "task", "value": "T-1", "reason": "incident"},
        headers=api.admin,
    )
    assert revoked.status_code == 201
    shown = await api.http.get(f"/v1/access-requests/{waiting['id']}", headers=sam)
    assert shown.json()["status"] == "cancelled" and "incident" in shown.json()["decided_reason"]
    assert (await api.http.get(f"/v1/access-requests/{granted['id']}", headers=sam)).json()[
        "grant"
    ]["revoked"]
    assert not await api.approvals.held_approvals(
        "bot", "T-1", digest_of("systemctl restart app"), ["restart"],
        runtime_id=granted["runtime_id"],
    )  # fmt: skip


async def test_concurrent_identical_asks_make_one_request(api: Api) -> None:
    bot = await api.agent("bot")
    answers = await asyncio.gather(*(ask(api, bot, RESTART) for _ in range(10)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    sam = await api.human("sam", "sre")
    listed = await api.http.get("/v1/access-requests?status=pending", headers=sam)
    assert len(listed.json()["access_requests"]) == 1


async def test_forged_and_replayed_grants_never_work(api: Api) -> None:
    bot, other = await api.agent("bot"), await api.agent("other-bot")
    sam = await api.human("sam", "sre")
    granted = (await ask(api, bot, RESTART)).json()
    await api.http.post(f"/v1/access-requests/{granted['id']}/approve", json={}, headers=sam)
    # Another agent cannot see it, and the grant does not cover it.
    assert (
        await api.as_agent(other, "GET", f"/v1/access-requests/{granted['id']}")
    ).status_code == 404
    theirs = (await ask(api, other, RESTART)).json()
    assert theirs["status"] == "pending" and theirs["id"] != granted["id"]
    assert not await api.approvals.held_approvals(
        "other-bot", "T-1", digest_of("systemctl restart app", "other-bot"), ["restart"],
        runtime_id=theirs["runtime_id"],
    )  # fmt: skip
    # Ids are never credentials: unknown ids are 404, a decided one cannot be approved again.
    assert (
        await api.http.post("/v1/access-requests/ar_0000/approve", json={}, headers=sam)
    ).status_code == 404
    again = await api.http.post(
        f"/v1/access-requests/{granted['id']}/approve", json={}, headers=sam
    )
    assert again.status_code == 409
    # A rule id put into an agent's ask does not make a grant either.
    rule_ask = await api.as_agent(
        bot, "POST", "/v1/access-requests", json={"target": "web", "rule": "restart"}
    )
    assert rule_ask.status_code == 400
    # The policy still denies what it denies: asking ahead cannot create a path around it.
    denied = await ask(api, bot, {"ssh": {"command": "rm -rf /"}})
    assert denied.status_code == 403 and denied.json()["decision"]["decision"] == "deny"


async def test_event_stream_reports_each_change(api: Api) -> None:
    bot = await api.agent("bot")
    sam = await api.human("sam", "sre")
    seen: list[dict[str, Any]] = []

    async def follow() -> None:
        async with api.http.stream(
            "GET", "/v1/access-requests/events?seconds=10", headers=sam
        ) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if seen[-1]["status"] == "approved":
                        return

    following = asyncio.create_task(follow())
    await asyncio.sleep(0.3)
    pending = (await ask(api, bot, RESTART)).json()
    await api.http.post(f"/v1/access-requests/{pending['id']}/approve", json={}, headers=sam)
    await asyncio.wait_for(following, 10)
    assert [(e["id"], e["status"]) for e in seen] == [
        (pending["id"], "pending"),
        (pending["id"], "approved"),
    ]


async def test_every_step_is_in_the_audit_trail(api: Api) -> None:
    bot = await api.agent("bot")
    sam = await api.human("sam", "sre")
    pending = (await ask(api, bot, RESTART)).json()
    await api.http.post(
        f"/v1/access-requests/{pending['id']}/approve", json={"reason": "ok"}, headers=sam
    )
    found = await api.http.get("/v1/audit/events?kind=approval", headers=api.admin)
    events = found.json()["events"]
    outcomes = [(e["action"]["outcome"], e["action"]["approver"]) for e in events]
    assert outcomes == [("requested", None), ("approved", "sam")]
    assert all(e["rule"] == "restart" and e["agent"] == "bot" for e in events)
    logins = await api.http.get(
        "/v1/audit/events?kind=admin.change&user=user:sam", headers=api.admin
    )
    assert any(e["action"]["name"] == "user.login" for e in logins.json()["events"])


async def test_users_without_a_role_see_only_what_they_may_decide(api: Api) -> None:
    bot = await api.agent("bot")
    carol = await api.human("carol", roles=())  # named by rule invoices-write as user:carol
    nobody = await api.human("nemo", roles=())
    invoice = {"http": {"method": "POST", "path": "/v1/invoices/7"}}
    for_carol = (await ask(api, bot, invoice, target="billing")).json()
    restart = (await ask(api, bot, RESTART)).json()
    listed = (await api.http.get("/v1/access-requests", headers=carol)).json()
    assert [r["id"] for r in listed["access_requests"]] == [for_carol["id"]]
    assert (
        await api.http.get(f"/v1/access-requests/{for_carol['id']}", headers=carol)
    ).status_code == 200
    assert (
        await api.http.get(f"/v1/access-requests/{restart['id']}", headers=carol)
    ).status_code == 404
    assert (await api.http.get("/v1/access-requests", headers=nobody)).json()[
        "access_requests"
    ] == []
    assert (await api.http.get("/v1/access-requests/events", headers=nobody)).status_code == 403


async def test_disabling_an_approver_revokes_a_grant_short_of_quorum_audited(api: Api) -> None:
    bot = await api.agent("bot")
    fay, carol = await api.human("fay", "finance"), await api.human("carol")
    action = {"http": {"method": "POST", "path": "/v1/invoices/7"}}
    pending = (await ask(api, bot, action, target="billing")).json()
    path = f"/v1/access-requests/{pending['id']}"
    await api.http.post(path + "/approve", json={}, headers=fay)
    done = await api.http.post(path + "/approve", json={}, headers=carol)
    assert done.json()["status"] == "approved"
    disabled = await api.http.post("/v1/users/fay/disable", headers=api.admin)
    assert disabled.status_code == 200, disabled.text
    shown = (await api.http.get(path, headers=carol)).json()
    assert shown["grant"]["revoked"] is True and shown["approvals"] == 1
    assert {(v["user"], v["counts"]) for v in shown["votes"]} == {("fay", False), ("carol", True)}
    again = await ask(api, bot, action, target="billing")
    assert again.json()["status"] == "pending" and again.json()["id"] != pending["id"]

    found = await api.http.get("/v1/audit/events?kind=approval", headers=api.admin)
    last = [e for e in found.json()["events"] if e["detail"]["request_id"] == pending["id"]][-1]
    assert last["action"]["outcome"] == "cancelled"
    assert last["detail"]["reason"] == "approver fay was disabled"
    changes = await api.http.get("/v1/audit/events?kind=admin.change", headers=api.admin)
    disable = [e for e in changes.json()["events"] if e["action"]["name"] == "user.disable"]
    assert disable[-1]["detail"]["grants_revoked"] == 1
