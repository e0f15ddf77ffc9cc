"""Personal tokens over the real API: a token made with a personal token never outlives it,
so an OIDC sign-in's ``token_ttl`` (or a short login) bounds every token made from it."""

from __future__ import annotations

import secrets
from datetime import datetime

from tests.approvals.conftest import Api


async def test_a_token_made_with_a_token_never_outlives_it(api: Api) -> None:
    password = secrets.token_urlsafe(16)
    body = {"id": "dana", "password": password, "roles": ["approver"], "groups": ["sre"]}
    assert (await api.http.post("/v1/users", json=body, headers=api.admin)).status_code == 201
    login = await api.http.post(
        "/v1/login", json={"user": "dana", "password": password, "ttl": 600}
    )
    assert login.status_code == 201, login.text
    short = {"Authorization": f"Bearer {login.json()['token']}"}
    ends = datetime.fromisoformat(login.json()["expires_at"])

    for ttl in (365 * 86400, None):  # asked for a year, or the default 30 days
        asked = {"name": "forever"} if ttl is None else {"name": "forever", "ttl": ttl}
        made = await api.http.post("/v1/tokens", json=asked, headers=short)
        assert made.status_code == 201, made.text
        assert datetime.fromisoformat(made.json()["expires_at"]) <= ends
    longer = {"Authorization": f"Bearer {made.json()['token']}"}
    assert (await api.http.get("/v1/me", headers=longer)).status_code == 200
    shorter = await api.http.post("/v1/tokens", json={"name": "s", "ttl": 60}, headers=short)
    assert datetime.fromisoformat(shorter.json()["expires_at"]) < ends  # shorter stays shorter

    api.clock.advance(601)
    assert (await api.http.get("/v1/me", headers=longer)).status_code == 401
    assert (await api.http.get("/v1/me", headers=short)).status_code == 401


async def test_a_password_reset_revokes_personal_tokens_and_is_audited(api: Api) -> None:
    dana = await api.human("dana", "sre")
    second = await api.http.post("/v1/tokens", json={"name": "ci"}, headers=dana)
    stolen = {"Authorization": f"Bearer {second.json()['token']}"}
    reset = await api.http.post(
        "/v1/users/dana/password", json={"password": secrets.token_urlsafe(16)}, headers=api.admin
    )
    assert reset.status_code == 200, reset.text
    for headers in (dana, stolen):
        assert (await api.http.get("/v1/me", headers=headers)).status_code == 401
    assert reset.json()["tokens_revoked"] == 2

    # An admin setting their own password with a personal token keeps that one only.
    boss = await api.human("boss", roles=("admin",))
    other = await api.http.post("/v1/tokens", json={"name": "other"}, headers=boss)
    other_headers = {"Authorization": f"Bearer {other.json()['token']}"}
    own = await api.http.post(
        "/v1/users/boss/password", json={"password": secrets.token_urlsafe(16)}, headers=boss
    )
    assert own.status_code == 200, own.text
    assert own.json()["tokens_revoked"] == 1
    assert (await api.http.get("/v1/me", headers=boss)).status_code == 200
    assert (await api.http.get("/v1/me", headers=other_headers)).status_code == 401

    found = await api.http.get("/v1/audit/events?kind=admin.change", headers=api.admin)
    changes = [e for e in found.json()["events"] if e["action"]["name"] == "user.password"]
    assert len(changes) == 2, changes
    assert [(c["user"].split(":")[0], c["target"], c["action"]["outcome"],
             c["detail"]["sessions_revoked"]) for c in changes] == [
        ("admin-token", "user:dana", "success", 2), ("user", "user:boss", "success", 1)
    ]  # fmt: skip


async def test_repeated_failed_sign_ins_are_answered_429_and_audited(api: Api) -> None:
    await api.human("erin", "sre")
    wrong = {"user": "erin", "password": "not the password"}
    for _ in range(10):
        assert (await api.http.post("/v1/login", json=wrong)).status_code == 401
    refused = await api.http.post("/v1/login", json=wrong)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "900"
    found = await api.http.get("/v1/audit/events?kind=admin.change", headers=api.admin)
    logins = [e for e in found.json()["events"] if e["target"] == "user:erin"]
    assert logins[-1]["action"] == {"name": "user.login", "outcome": "denied"}
    assert logins[-1]["detail"]["status"] == 429
