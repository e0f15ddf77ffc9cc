"""OIDC sign-in (authorization code + PKCE) against a real provider on loopback, through the
real Tether API: groups from the configured claim, roles mapped from groups; state, nonce and
PKCE each refuse what does not belong to the sign-in."""

from __future__ import annotations

import asyncio
import html
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn

from tests.approvals.conftest import Api, api  # noqa: F401 - the fixture
from tests.users.oidc_provider import CLIENT_ID, CLIENT_SECRET, FORM_FIELD, Provider, confirm_in
from tether.identity.jwks import JwksSource
from tether.identity.workload import IssuerConfig, TrustedIssuers
from tether.users.config import OidcLoginConfig
from tether.users.oidc import CALLBACK_PATH, OidcLogin


@pytest.fixture
async def provider(api: Api) -> AsyncIterator[Provider]:  # noqa: F811
    sock = socket.create_server(("127.0.0.1", 0))
    issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    idp = Provider(issuer, api.clock)
    server = uvicorn.Server(uvicorn.Config(idp, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    config = IssuerConfig(
        name="corp", issuer=issuer, audiences=[CLIENT_ID], kind="oidc",
        jwks=JwksSource(url=issuer + "/jwks"), user_claim="preferred_username",
        groups_claim="groups",
    )  # fmt: skip
    api.stack.service.issuers = TrustedIssuers.from_configs([config], clock=api.clock)
    login = OidcLoginConfig(
        issuer=issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,  # type: ignore[arg-type]
        roles={"tether-admins": ["admin"], "sre": ["approver"]},
    )  # fmt: skip
    api.users.oidc = OidcLogin(
        login, lambda: api.stack.service.issuers, api.users, clock=api.clock,
        redirect_uri=str(api.http.base_url).rstrip("/") + CALLBACK_PATH,
    )  # fmt: skip
    try:
        yield idp
    finally:
        server.should_exit = True
        await task


async def sign_in(api: Api, *, confirm: bool = True) -> tuple[httpx.Response, str]:  # noqa: F811
    started = await api.http.post("/v1/login/oidc")
    assert started.status_code == 201, started.text
    async with httpx.AsyncClient(follow_redirects=True, timeout=30) as browser:
        page = await browser.get(started.json()["authorization_url"])
        if confirm and page.status_code == 200:
            assert started.json()["user_code"] in page.text  # the code the terminal shows
            page = await confirm_in(browser, page)
    return page, started.json()["poll_id"]


async def test_sign_in_maps_groups_and_roles(api: Api, provider: Provider) -> None:  # noqa: F811
    page, poll_id = await sign_in(api)
    assert page.status_code == 200 and "Signed in to Tether as alice" in page.text
    assert "tpt_" not in page.text  # the token never reaches the browser
    got = await api.http.get(f"/v1/login/oidc/poll/{poll_id}")
    assert got.status_code == 200 and got.json()["token"].startswith("tpt_")
    assert (await api.http.get(f"/v1/login/oidc/poll/{poll_id}")).status_code == 404  # once
    auth = {"Authorization": f"Bearer {got.json()['token']}"}
    me = (await api.http.get("/v1/me", headers=auth)).json()
    assert me["source"] == "oidc" and me["groups"] == ["sre", "tether-admins"]
    assert me["roles"] == ["admin", "approver"]
    assert (await api.http.get("/v1/users", headers=auth)).status_code == 200  # admin via group

    provider.groups = ["sre"]  # removed from the admin group at the provider
    _, second = await sign_in(api)
    token = (await api.http.get(f"/v1/login/oidc/poll/{second}")).json()["token"]
    again = {"Authorization": f"Bearer {token}"}
    assert (await api.http.get("/v1/me", headers=again)).json()["roles"] == ["approver"]
    assert (await api.http.get("/v1/users", headers=again)).status_code == 403


async def test_poll_waits_for_the_callback(api: Api, provider: Provider) -> None:  # noqa: F811
    started = (await api.http.post("/v1/login/oidc")).json()
    pending = await api.http.get(f"/v1/login/oidc/poll/{started['poll_id']}")
    assert pending.status_code == 202
    waiting = asyncio.create_task(api.http.get(f"/v1/login/oidc/poll/{started['poll_id']}?wait=20"))
    async with httpx.AsyncClient(follow_redirects=True) as browser:
        await confirm_in(browser, await browser.get(started["authorization_url"]))
    assert (await asyncio.wait_for(waiting, 10)).status_code == 200


async def test_state_nonce_and_pkce_refuse_foreign_logins(api: Api, provider: Provider) -> None:  # noqa: F811
    first = (await api.http.post("/v1/login/oidc")).json()
    second = (await api.http.post("/v1/login/oidc")).json()
    async with httpx.AsyncClient(follow_redirects=False) as browser:
        redirect = await browser.get(first["authorization_url"])
    assert redirect.status_code == 302
    code = httpx.URL(redirect.headers["location"]).params["code"]
    second_state = httpx.URL(second["authorization_url"]).params["state"]
    # The first login's code with the second login's state: the verifier does not match.
    swapped = await api.http.get(f"{CALLBACK_PATH}?code={code}&state={second_state}")
    assert swapped.status_code == 400 and "refused the authorization code" in swapped.text
    replay = await api.http.get(f"{CALLBACK_PATH}?code={code}&state={second_state}")
    assert replay.status_code == 400 and "unknown or expired" in replay.text  # state spent
    forged = await api.http.get(f"{CALLBACK_PATH}?code={code}&state=made-up")
    assert forged.status_code == 400

    provider.nonce_override = "a-nonce-of-another-login"
    page, poll_id = await sign_in(api)
    assert page.status_code == 400 and "nonce" in page.text
    assert (await api.http.get(f"/v1/login/oidc/poll/{poll_id}")).status_code == 202


async def test_a_provider_cannot_take_over_a_local_account(api: Api, provider: Provider) -> None:  # noqa: F811
    await api.http.post("/v1/users", json={"id": "alice", "password": "x" * 16}, headers=api.admin)
    page, _ = await sign_in(api)
    assert page.status_code == 400 and "local user" in page.text
    provider.user = "Not A Valid Id"
    page, _ = await sign_in(api)
    assert page.status_code == 400 and "not a Tether user id" in page.text


async def test_a_provider_group_tether_cannot_name_is_left_out(
    api: Api,  # noqa: F811
    provider: Provider,
) -> None:
    """A directory's ``Domain Users`` made every sign-in of its members a 500, unaudited."""
    provider.groups = ["sre", "Domain Users", "x" * 150, "Ünicode"]
    page, poll_id = await sign_in(api)
    assert page.status_code == 200, page.text
    token = (await api.http.get(f"/v1/login/oidc/poll/{poll_id}")).json()["token"]
    me = (await api.http.get("/v1/me", headers={"Authorization": f"Bearer {token}"})).json()
    assert me["groups"] == ["sre"] and me["roles"] == ["approver"]


async def test_a_sign_in_started_by_someone_else_needs_the_browsers_confirmation(
    api: Api,  # noqa: F811
    provider: Provider,
) -> None:
    """Mallory starts a sign-in and sends its authorization URL to alice, who is signed in at
    the provider: her browser completes the provider's part without a click. Her token must
    not go to Mallory's poll unless alice confirms, on a page naming her and Mallory's code."""
    started = (await api.http.post("/v1/login/oidc")).json()  # mallory's terminal
    async with httpx.AsyncClient(follow_redirects=True, timeout=30) as alices_browser:
        page = await alices_browser.get(started["authorization_url"])
        poll = f"/v1/login/oidc/poll/{started['poll_id']}"
        assert (await api.http.get(poll)).status_code == 202  # nothing for mallory
        assert page.status_code == 200 and "alice" in page.text
        assert started["user_code"] in page.text and "tpt_" not in page.text
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        # A confirmation without the page's secret (mallory cannot read alice's page).
        fields = dict(FORM_FIELD.findall(page.text))
        forged = await api.http.post(
            "/v1/login/oidc/confirm", data={"state": html.unescape(fields["state"]),
                                            "confirm": "guessed"}
        )  # fmt: skip
        assert forged.status_code == 400
        assert (await api.http.get(poll)).status_code == 202
        done = await confirm_in(alices_browser, page)  # alice confirms after all
        assert done.status_code == 200 and "Signed in to Tether as alice" in done.text
        again = await confirm_in(alices_browser, page)
        assert again.status_code == 400  # once
    assert (await api.http.get(poll)).status_code == 200
