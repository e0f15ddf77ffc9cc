"""Probes of a red-team review: an OIDC callback created the user and changed its roles
before the person confirmed the sign-in, with no audit event of it. Nothing of the user
changes now until the confirmation, whose ``user.login`` event names the roles, what
they were, and whether the user was created."""

from __future__ import annotations

from typing import Any

import httpx

from tests.approvals.conftest import Api, api  # noqa: F401 - the fixture
from tests.users.oidc_provider import Provider, confirm_in
from tests.users.test_oidc import provider  # noqa: F401 - the fixture


async def test_an_unconfirmed_oidc_callback_changes_no_user(
    api: Api,  # noqa: F811
    provider: Provider,  # noqa: F811
) -> None:
    """Alice (provider groups sre + tether-admins) opens an authorization URL and never
    confirms: no user is made. Once she confirms, she is, and the event says so."""
    started = (await api.http.post("/v1/login/oidc")).json()
    async with httpx.AsyncClient(follow_redirects=True, timeout=30) as browser:
        page = await browser.get(started["authorization_url"])
        assert page.status_code == 200 and "Confirm" in page.text  # not confirmed
        assert (await api.http.get("/v1/users/alice", headers=api.admin)).status_code == 404
        await confirm_in(browser, page)
    shown = await api.http.get("/v1/users/alice", headers=api.admin)
    assert shown.status_code == 200 and shown.json()["roles"] == ["admin", "approver"]
    (login,) = [e for e in await _logins(api) if e["action"]["outcome"] == "success"]
    detail = login["detail"]
    assert (detail["created"], detail["roles"]) == (True, ["admin", "approver"]), detail
    assert detail["pat"]


async def test_a_role_from_the_provider_waits_for_the_confirmation(
    api: Api,  # noqa: F811
    provider: Provider,  # noqa: F811
) -> None:
    """An existing OIDC user (approver) gains role admin from the provider's groups at a
    callback nobody confirms: not in force; confirmed, it is, and the event shows the
    roles before and after."""
    provider.groups = ["sre"]
    started = (await api.http.post("/v1/login/oidc")).json()
    async with httpx.AsyncClient(follow_redirects=True, timeout=30) as browser:
        await confirm_in(browser, await browser.get(started["authorization_url"]))
    token = (await api.http.get(f"/v1/login/oidc/poll/{started['poll_id']}")).json()["token"]
    alice = {"Authorization": f"Bearer {token}"}
    assert (await api.http.get("/v1/users", headers=alice)).status_code == 403

    provider.groups = ["sre", "tether-admins"]
    again = (await api.http.post("/v1/login/oidc")).json()
    async with httpx.AsyncClient(follow_redirects=True, timeout=30) as browser:
        page = await browser.get(again["authorization_url"])
        assert page.status_code == 200  # callback done, not confirmed
        assert (await api.http.get("/v1/users", headers=alice)).status_code == 403
        await confirm_in(browser, page)
    assert (await api.http.get("/v1/users", headers=alice)).status_code == 200  # now admin
    last = [e for e in await _logins(api) if e["action"]["outcome"] == "success"][-1]
    assert (last["detail"]["roles_before"], last["detail"]["roles"], last["detail"]["created"]) == (
        ["approver"],
        ["admin", "approver"],
        False,
    )


async def _logins(node: Api) -> list[dict[str, Any]]:
    found = await node.http.get("/v1/audit/events?kind=admin.change&limit=1000",
                                headers=node.admin)  # fmt: skip
    assert found.status_code == 200, found.text
    return [e for e in found.json()["events"] if e["action"]["name"] == "user.login"]
