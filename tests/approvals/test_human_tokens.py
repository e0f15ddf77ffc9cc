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
