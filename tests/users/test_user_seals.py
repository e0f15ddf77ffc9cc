"""Users are sealed (tether.users.store): a user whose password hash, TOTP secret, state,
roles or groups were changed in the database behind Tether's back, or a user planted
there, logs in with nothing and its personal tokens open nothing; a personal token planted
for a user, or one whose expiry, revocation or user was changed, opens nothing; on SQLite
and PostgreSQL; an edit through Tether does not bless it; ``tether store seal`` adopts users
from before the upgrade (docs/vault.md, "Tampering with the database")."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, insert, update

from tests.identity_e2e.conftest import Clock
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.store import Store
from tether.store.identity import digest
from tether.store.sealing import adopt, unsealed
from tether.users import totp
from tether.users.passwords import hash_password
from tether.users.schema import group_members, user_groups, user_roles, user_tokens, users
from tether.users.service import LoginRefused, UserError, UserService

PASSWORD = "correct horse battery"
CHOSEN = "the attacker's password"


@pytest.fixture
async def service(store_url: str) -> AsyncIterator[tuple[UserService, Clock]]:
    store = await Store.open(store_url)
    clock = Clock()
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    try:
        yield UserService(store.engine, cipher, clock=clock), clock
    finally:
        await store.close()


async def _set(users_: UserService, user_id: str, **values: Any) -> None:
    async with users_.engine.begin() as conn:
        await conn.execute(update(users).where(users.c.id == user_id).values(values))


async def _refused(
    service_: UserService, user_id: str, password: str, code: str | None = None
) -> None:
    with pytest.raises(LoginRefused):
        await service_.login(user_id, password, code)
    assert await service_.find(user_id) is None


async def test_a_password_hash_set_outside_tether_logs_in_nobody(
    service: tuple[UserService, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    users_, _ = service
    await users_.add("ann", password=PASSWORD, roles=["admin"])
    token, _ = await users_.create_token("ann", name="laptop")
    assert await users_.authenticate(token) is not None
    await _set(users_, "ann", password_hash=hash_password(CHOSEN))
    with caplog.at_level(logging.ERROR, "tether.users.store"):
        await _refused(users_, "ann", CHOSEN)
    assert "user 'ann' refused: its seal does not verify" in caplog.text
    await _refused(users_, "ann", PASSWORD)
    assert await users_.authenticate(token) is None  # its personal token opens nothing


async def test_a_totp_secret_cleared_outside_tether_logs_in_nobody(
    service: tuple[UserService, Clock],
) -> None:
    users_, clock = service
    await users_.add("bob", password=PASSWORD)
    secret = await users_.enroll_totp("bob")
    assert (await users_.login("bob", PASSWORD, totp.code_at(secret, clock.now))).has_totp
    await _set(users_, "bob", totp_secret=None)  # a second factor taken away
    clock.advance(30)
    await _refused(users_, "bob", PASSWORD)


async def test_a_state_roles_or_groups_changed_outside_tether_refuse_the_user(
    service: tuple[UserService, Clock],
) -> None:
    users_, _ = service
    for name in ("cat", "dan", "eve", "fay"):
        await users_.add(name, password=PASSWORD, groups=["ops"])
    await users_.set_state("cat", "disabled")
    await _set(users_, "cat", state="active")  # re-enabled behind Tether's back
    async with users_.engine.begin() as conn:
        await conn.execute(insert(user_roles).values(user_id="dan", role="admin"))
        await conn.execute(insert(user_groups).values(name="dba", created_at=users_.clock()))
        await conn.execute(insert(group_members).values(group_name="dba", user_id="eve"))
        await conn.execute(delete(group_members).where(group_members.c.user_id == "fay"))
    for name in ("cat", "dan", "eve", "fay"):
        await _refused(users_, name, PASSWORD)
    assert await users_.group_members("ops") == set()  # cat, dan, eve and fay refused
    assert await users_.group_members("dba") == set()


async def test_a_planted_user_logs_in_nobody(service: tuple[UserService, Clock]) -> None:
    users_, clock = service
    row = {"id": "mallory", "source": "local", "password_hash": hash_password(CHOSEN),
           "state": "active", "created_at": clock(), "updated_at": clock()}  # fmt: skip
    async with users_.engine.begin() as conn:
        await conn.execute(insert(users).values(row))
        await conn.execute(insert(user_roles).values(user_id="mallory", role="admin"))
    await _refused(users_, "mallory", CHOSEN)


async def test_an_edit_through_tether_does_not_bless_a_changed_user(
    service: tuple[UserService, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    users_, _ = service
    await users_.add("gus", password=PASSWORD)
    await _set(users_, "gus", password_hash=hash_password(CHOSEN))
    with (
        caplog.at_level(logging.ERROR, "tether.users.service"),
        pytest.raises(UserError, match="'gus' is refused: it was changed outside Tether"),
    ):
        await users_.update("gus", roles=["approver"])
    assert "its seal did not verify before: it stays refused" in caplog.text
    await _refused(users_, "gus", CHOSEN)


async def test_users_from_before_the_upgrade_log_in_once_adopted(
    service: tuple[UserService, Clock],
) -> None:
    users_, _ = service
    await users_.add("hal", password=PASSWORD, roles=["approver"], groups=["sre"])
    await _set(users_, "hal", seal=None)  # as written before migration 0015
    assert await unsealed(users_.engine) == {"users": ["hal"]}
    await _refused(users_, "hal", PASSWORD)
    assert await adopt(users_.engine, users_.sealer) == {"users": ["hal"]}
    found = await users_.login("hal", PASSWORD)
    assert (found.roles, found.groups) == ({"approver"}, {"sre"})


# --- personal API tokens ----------------------------------------------------------------------


async def _set_token(users_: UserService, token_id: str, **values: Any) -> None:
    async with users_.engine.begin() as conn:
        await conn.execute(update(user_tokens).where(user_tokens.c.id == token_id).values(values))


async def test_a_personal_token_planted_for_a_user_opens_nothing(
    service: tuple[UserService, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    users_, clock = service
    await users_.add("ivy", password=PASSWORD, roles=["admin"])
    chosen = "tpt_" + secrets.token_urlsafe(32)  # the writer's own token for ivy
    row = {"id": "planted", "user_id": "ivy", "name": "x", "token_hash": digest(chosen),
           "created_at": clock(), "expires_at": clock() + timedelta(days=1)}  # fmt: skip
    async with users_.engine.begin() as conn:
        await conn.execute(insert(user_tokens).values(row))
    with caplog.at_level(logging.ERROR, "tether.crypto.seal"):
        assert await users_.authenticate(chosen) is None
    assert "personal token 'planted' (user 'ivy') refused: it has no seal" in caplog.text
    assert await users_.find("ivy") is not None  # the user itself is intact


async def test_a_personal_token_changed_outside_tether_opens_nothing(
    service: tuple[UserService, Clock],
) -> None:
    users_, clock = service
    await users_.add("jon", password=PASSWORD, roles=["admin"])
    await users_.add("kim", password=PASSWORD)
    short, record = await users_.create_token("jon", name="short", ttl=60)
    await _set_token(users_, record.id, expires_at=clock() + timedelta(days=365))
    clock.advance(61)
    assert await users_.authenticate(short) is None  # an expiry pushed back

    revoked, record = await users_.create_token("jon", name="gone")
    assert await users_.revoke_token(record.id)
    await _set_token(users_, record.id, revoked_at=None)
    assert await users_.authenticate(revoked) is None  # a revocation cleared

    moved, record = await users_.create_token("kim", name="kim's")
    await _set_token(users_, record.id, user_id="jon")
    assert await users_.authenticate(moved) is None  # kim's token made jon's


async def test_a_password_reset_revokes_tokens_sealed(service: tuple[UserService, Clock]) -> None:
    users_, _ = service
    await users_.add("lea", password=PASSWORD)
    kept, _ = await users_.create_token("lea", name="this session")
    other, _ = await users_.create_token("lea", name="laptop")
    assert await users_.set_password("lea", PASSWORD + "!", keep_token=kept) == 1
    assert await users_.authenticate(kept) is not None
    assert await users_.authenticate(other) is None
    assert await unsealed(users_.engine) == {}
