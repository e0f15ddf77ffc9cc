"""Identity rows changed in the database behind Tether's back (docs/vault.md, "Tampering
with the database"), through the real API on SQLite and PostgreSQL: an admin token row
planted with a hash of the writer's choosing, an expiry pushed back or a revocation
cleared opens nothing (401, logged as an error, never a traceback); a join token planted
for an existing agent, or one whose use, expiry or labels were changed, joins nobody."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select, update

from tests.identity_e2e.conftest import Agent, join_form
from tests.identity_e2e.test_api_identity import Api, problem, serving_api
from tether.identity.admintokens import create_admin_token
from tether.identity.grants import JOIN_TOKEN_PREFIX
from tether.store import keys as key_store
from tether.store.agents import join_seal_columns
from tether.store.identity import digest
from tether.store.schema import admin_tokens, agents, join_tokens
from tether.store.sealing import adopt


@pytest.fixture
async def api(store_url: str) -> AsyncIterator[Api]:
    async for served in serving_api(store_url):
        yield served


async def _agents(api: Api, token: str) -> httpx.Response:
    return await api.http.get("/v1/agents", headers={"Authorization": f"Bearer {token}"})


async def _set(api: Api, token_id: str, **values: Any) -> None:
    async with api.stack.engine.begin() as conn:
        await conn.execute(update(admin_tokens).where(admin_tokens.c.id == token_id).values(values))


@pytest.mark.parametrize("seal", [None, "A" * 43], ids=["no-seal", "made-up-seal"])
async def test_a_planted_admin_token_is_401(
    api: Api, seal: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    chosen = "tat_0123456789ab." + secrets.token_urlsafe(32)  # the writer's own token
    row = {"id": "0123456789ab", "name": "x", "token_hash": digest(chosen),
           "created_at": api.stack.clock(), "seal": seal}  # fmt: skip
    async with api.stack.engine.begin() as conn:
        await conn.execute(insert(admin_tokens).values(row))
    with caplog.at_level(logging.ERROR, "tether.crypto.seal"):
        body = problem(await _agents(api, chosen), 401)
    assert "unknown, expired or revoked" in body["detail"]
    assert "admin token '0123456789ab' refused" in caplog.text
    assert "the row was changed outside Tether" in caplog.text
    assert (await api.http.get("/v1/agents", headers=api.admin)).is_success  # Tether's own


async def test_an_admin_token_copied_onto_another_row_is_401(api: Api) -> None:
    chosen = "tat_0123456789ab." + secrets.token_urlsafe(32)
    _, mine = await create_admin_token(
        api.stack.engine, api.stack.cipher.sealer, name="x", now=api.stack.clock()
    )
    # The writer moves their own hash onto a genuine row, keeping its seal.
    await _set(api, mine.id, token_hash=digest(chosen))
    problem(await _agents(api, chosen), 401)


async def test_an_expiry_pushed_back_is_401(api: Api) -> None:
    sealer, clock = api.stack.cipher.sealer, api.stack.clock
    short, record = await create_admin_token(
        api.stack.engine, sealer, name="short", now=clock(), ttl=60
    )
    assert (await _agents(api, short)).is_success
    await _set(api, record.id, expires_at=clock() + timedelta(days=365))
    clock.advance(61)
    problem(await _agents(api, short), 401)


async def test_a_revocation_cleared_is_401(api: Api) -> None:
    sealer, clock = api.stack.cipher.sealer, api.stack.clock
    text, record = await create_admin_token(api.stack.engine, sealer, name="gone", now=clock())
    async with api.stack.engine.begin() as conn:
        assert await key_store.revoke_admin_token(conn, sealer, record.id, clock())
    problem(await _agents(api, text), 401)
    await _set(api, record.id, revoked_at=None)
    problem(await _agents(api, text), 401)


async def test_an_admin_token_from_before_the_upgrade_works_once_adopted(api: Api) -> None:
    sealer, clock = api.stack.cipher.sealer, api.stack.clock
    text, record = await create_admin_token(api.stack.engine, sealer, name="old", now=clock())
    await _set(api, record.id, seal=None)  # as written before migration 0015
    problem(await _agents(api, text), 401)
    assert await adopt(api.stack.engine, sealer) == {"admin_tokens": [record.id]}
    assert (await _agents(api, text)).is_success


# --- join tokens ------------------------------------------------------------------------------


async def _mint(api: Api, agent_id: str = "bot") -> str:
    minted = await api.http.post(f"/v1/agents/{agent_id}/join-tokens", headers=api.admin)
    assert minted.status_code == 201, minted.text
    token: str = minted.json()["join_token"]
    return token


async def _join(api: Api, token: str) -> httpx.Response:
    return await api.token(Agent("bot"), join_form(token))


async def _set_join(api: Api, token: str, **values: Any) -> None:
    token_id = token.removeprefix(JOIN_TOKEN_PREFIX).partition(".")[0]
    async with api.stack.engine.begin() as conn:
        await conn.execute(update(join_tokens).where(join_tokens.c.id == token_id).values(values))


def _refused(answer: httpx.Response) -> None:
    body = problem(answer, 400)
    assert body["error"] == "invalid_grant"
    assert "unknown, used, expired or its agent inactive" in body["detail"]


async def test_a_planted_join_token_does_not_join(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    await api.agent("bot")  # an existing agent, joined once the genuine way
    row = {"id": "feedfacefeedface", "token_hash": digest("chosen-secret"), "agent_id": "bot",
           "runtime_labels": {}, "created_at": api.stack.clock(),
           "expires_at": api.stack.clock() + timedelta(hours=1)}  # fmt: skip
    async with api.stack.engine.begin() as conn:
        await conn.execute(insert(join_tokens).values(row))
    with caplog.at_level(logging.ERROR, "tether.crypto.seal"):
        _refused(await _join(api, f"{JOIN_TOKEN_PREFIX}feedfacefeedface.chosen-secret"))
    assert "join token 'feedfacefeedface' (agent 'bot') refused: it has no seal" in caplog.text


async def test_a_join_token_changed_outside_tether_does_not_join(api: Api) -> None:
    await api.agent("bot")
    used = await _mint(api)
    assert (await _join(api, used)).status_code == 200
    await _set_join(api, used, used_at=None, used_by_runtime=None)  # its use cleared
    _refused(await _join(api, used))

    late = await _mint(api)
    api.stack.clock.advance(86400 + 1)
    await _set_join(api, late, expires_at=api.stack.clock() + timedelta(hours=1))
    _refused(await _join(api, late))

    relabelled = await _mint(api)
    await _set_join(api, relabelled, runtime_labels={"env": "prod"})
    _refused(await _join(api, relabelled))


async def test_offboarding_expires_join_tokens_sealed(api: Api) -> None:
    await api.agent("bot")
    token = await _mint(api)
    gone = await api.http.post("/v1/agents/bot/offboard", json={"reason": "x"}, headers=api.admin)
    assert gone.status_code == 200, gone.text
    async with api.stack.engine.connect() as conn:
        row = (await conn.execute(select(join_tokens))).mappings().all()
    sealer = api.stack.cipher.sealer
    assert [sealer.verify("join_tokens", join_seal_columns(r), r["seal"]) for r in row] == [
        True, True
    ]  # fmt: skip
    _refused(await _join(api, token))


async def test_a_join_token_from_before_the_upgrade_joins_once_adopted(api: Api) -> None:
    await api.agent("bot")
    token = await _mint(api)
    await _set_join(api, token, seal=None)
    _refused(await _join(api, token))
    adopted = await adopt(api.stack.engine, api.stack.cipher.sealer)
    assert list(adopted) == ["join_tokens"] and len(adopted["join_tokens"]) == 1
    assert (await _join(api, token)).status_code == 200


# --- agents -----------------------------------------------------------------------------------


async def test_an_agent_changed_outside_tether_is_not_enabled_through_the_api(api: Api) -> None:
    await api.agent("bot")
    assert (await api.http.post("/v1/agents/bot/disable", headers=api.admin)).status_code == 200
    async with api.stack.engine.begin() as conn:  # the writer gives it labels of their own
        await conn.execute(update(agents).values(labels={"team": "admins"}))
    body = problem(await api.http.post("/v1/agents/bot/enable", headers=api.admin), 409)
    assert "its stored row does not verify" in body["detail"]
    assert (await api.http.post("/v1/agents/bot/disable", headers=api.admin)).status_code == 200
