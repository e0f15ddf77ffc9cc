"""Probes of a red-team review of the admin and human API: what held (routes by role, mass
assignment, name variants and TOTP reuse at login), and two audit gaps that failed before
their fixes (personal token ids redacted out of their events; a password typed as the user
name stored in clear as a refused login's target)."""

from __future__ import annotations

import secrets
from typing import Any

from tests.approvals.conftest import Api
from tether.users import totp


async def _events(api: Api, name: str) -> list[dict[str, Any]]:
    found = await api.http.get("/v1/audit/events?kind=admin.change&limit=1000", headers=api.admin)
    assert found.status_code == 200, found.text
    return [e for e in found.json()["events"] if e["action"]["name"] == name]


# --- held -----------------------------------------------------------------------------------


async def test_agent_token_refused_on_admin_and_human_routes(api: Api) -> None:
    bot = await api.agent("bot")
    for method, path in [
        ("GET", "/v1/agents"),
        ("GET", "/v1/users"),
        ("GET", "/v1/secrets"),
        ("GET", "/v1/audit/events"),
        ("POST", "/v1/keys/rotate"),
    ]:
        answer = await api.as_agent(bot, method, path)
        assert answer.status_code == 401, (path, answer.text)
    bearer = {"Authorization": f"Bearer {bot.token}"}
    for path in ["/v1/me", "/v1/tokens", "/v1/access-requests", "/v1/users"]:
        assert (await api.http.get(path, headers=bearer)).status_code == 401, path


async def test_roles_hold_per_route(api: Api) -> None:
    auditor = await api.human("aud", roles=("auditor",))
    approver = await api.human("appr", "sre", roles=("approver",))
    assert (await api.http.get("/v1/audit/events", headers=auditor)).status_code == 200
    for headers in (auditor, approver):
        for method, path, body in [
            ("GET", "/v1/users", None),
            ("POST", "/v1/users", {"id": "x", "roles": ["admin"]}),
            ("PATCH", "/v1/users/aud", {"roles": ["admin"]}),
            ("GET", "/v1/secrets", None),
            ("POST", "/v1/users/aud/totp", None),
            ("POST", "/v1/users/appr/password", {"password": "x" * 20}),
            ("POST", "/v1/agents", {"id": "zz", "owner": "aud"}),
            ("POST", "/v1/keys/rotate", None),
        ]:
            answer = await api.http.request(method, path, json=body, headers=headers)
            assert answer.status_code == 403, (method, path, answer.text)
    assert (await api.http.get("/v1/tokens?all=true", headers=approver)).status_code == 403
    assert (await api.http.get("/v1/tokens?user=aud", headers=approver)).status_code == 403


async def test_mass_assignment_refused(api: Api) -> None:
    for body in [
        {"id": "m1", "state": "disabled"},
        {"id": "m2", "source": "oidc"},
        {"id": "m3", "roles": ["root"]},
        {"id": "M4"},
    ]:
        answer = await api.http.post("/v1/users", json=body, headers=api.admin)
        assert answer.status_code in (400, 422), (body, answer.text)
    await api.human("pat")
    for body in [{"state": "disabled"}, {"id": "other"}, {"totp": False}]:
        answer = await api.http.patch("/v1/users/pat", json=body, headers=api.admin)
        assert answer.status_code == 422, (body, answer.text)


async def test_login_name_variants_and_totp_reuse(api: Api) -> None:
    password = secrets.token_urlsafe(16)
    made = await api.http.post("/v1/users", json={"id": "tina", "password": password},
                               headers=api.admin)  # fmt: skip
    assert made.status_code == 201
    for name in (
        "Tina",
        " tina",
        "tina ",
        "TINA",
        "\uff54\uff49\uff4e\uff41",
    ):  # the last in full width
        answer = await api.http.post("/v1/login", json={"user": name, "password": password})
        assert answer.status_code == 401, name
    secret = (await api.http.post("/v1/users/tina/totp", headers=api.admin)).json()["secret"]
    code = totp.code_at(secret, api.clock().timestamp())
    first = await api.http.post("/v1/login", json={"user": "tina", "password": password,
                                                   "totp": code})  # fmt: skip
    assert first.status_code == 201, first.text
    again = await api.http.post("/v1/login", json={"user": "tina", "password": password,
                                                   "totp": code})  # fmt: skip
    assert again.status_code == 401
    spaced = await api.http.post("/v1/login", json={"user": "tina", "password": password,
                                                    "totp": f" {code} "})  # fmt: skip
    assert spaced.status_code == 401


# --- audit gaps, fixed --------------------------------------------------------------------


async def test_the_trail_names_each_personal_token_made(api: Api) -> None:
    """POST /v1/tokens was audited with target ``token:<id>`` and a login with detail
    ``token_id``, which the trail's redactor (``token`` is a sensitive name) turned into
    ``[REDACTED]``: no event said which personal token was made. Now ``pat``."""
    password = secrets.token_urlsafe(16)
    await api.http.post("/v1/users", json={"id": "dora", "password": password},
                        headers=api.admin)  # fmt: skip
    login = await api.http.post("/v1/login", json={"user": "dora", "password": password})
    assert login.status_code == 201
    dora = {"Authorization": f"Bearer {login.json()['token']}"}
    made = await api.http.post("/v1/tokens", json={"name": "ci"}, headers=dora)
    assert made.status_code == 201
    created = await _events(api, "token.create")
    logins = [e for e in await _events(api, "user.login") if e["action"]["outcome"] == "success"]
    assert made.json()["id"] in repr(created[-1]), created[-1]["target"]
    assert login.json()["id"] in repr(logins[-1]), logins[-1]["detail"]


async def test_failed_login_does_not_store_the_name_field_in_clear(api: Api) -> None:
    """A password typed into the name field (a common slip) was stored in clear as the
    refused login's target ``user:<password>``; a name that is no user's is now
    ``user:(unknown)``, a user's name is kept."""
    typed = "Corr3ct-Horse-Battery-Staple!"
    answer = await api.http.post("/v1/login", json={"user": typed, "password": typed})
    assert answer.status_code == 401
    denied = await _events(api, "user.login")
    assert denied
    assert typed not in repr(denied[-1]), denied[-1]
    assert denied[-1]["target"] == "user:(unknown)"
    await api.http.post("/v1/users", json={"id": "erin", "password": typed}, headers=api.admin)
    assert (
        await api.http.post("/v1/login", json={"user": "erin", "password": "no"})
    ).status_code == 401
    assert (await _events(api, "user.login"))[-1]["target"] == "user:erin"
