"""Users over a real store (SQLite and PostgreSQL): argon2 passwords, TOTP (RFC 6238),
personal API tokens hashed at rest, expiring, revocable, and dead with their user."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator

import pytest
from alembic import command
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select
from sqlalchemy.ext.asyncio import create_async_engine

from tests.identity_e2e.conftest import Clock
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.store import Store
from tether.store.migrate import alembic_config, upgrade
from tether.users import totp
from tether.users.passwords import hash_password, verify_password
from tether.users.schema import user_tokens
from tether.users.schema import users as users_table
from tether.users.service import LoginRefused, LoginThrottled, UserError, UserService

PASSWORD = "correct horse battery"


@pytest.fixture
async def service(store_url: str) -> AsyncIterator[tuple[UserService, Clock]]:
    store = await Store.open(store_url)
    clock = Clock()
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    try:
        yield UserService(store.engine, cipher, clock=clock), clock
    finally:
        await store.close()


async def test_login_checks_password_and_refuses_alike(service: tuple[UserService, Clock]) -> None:
    users, _ = service
    await users.add("alice", password=PASSWORD, roles=["approver"], groups=["sre"])
    assert (await users.login("alice", PASSWORD)).groups == {"sre"}
    for name, password in (("alice", PASSWORD + "x"), ("nobody", PASSWORD)):
        with pytest.raises(LoginRefused):
            await users.login(name, password)
    await users.set_state("alice", "disabled")
    with pytest.raises(LoginRefused):
        await users.login("alice", PASSWORD)
    async with users.engine.connect() as conn:
        stored = await conn.scalar(select(users_table.c.password_hash))
    assert stored is not None and stored.startswith("$argon2id$") and PASSWORD not in stored


async def test_weak_passwords_ids_roles_refused(service: tuple[UserService, Clock]) -> None:
    users, _ = service
    with pytest.raises(UserError, match="at least"):
        await users.add("bob", password="short")
    with pytest.raises(UserError, match="user id"):
        await users.add("Bob Smith", password=PASSWORD)
    with pytest.raises(UserError, match="unknown role"):
        await users.add("bob", password=PASSWORD, roles=["root"])
    await users.add("bob", password=PASSWORD)
    with pytest.raises(UserError, match="exists") as caught:
        await users.add("bob", password=PASSWORD)
    assert caught.value.status == 409


async def test_totp_needed_once_enrolled_and_each_code_used_once(
    service: tuple[UserService, Clock],
) -> None:
    users, clock = service
    await users.add("carol", password=PASSWORD)
    secret = await users.enroll_totp("carol")
    with pytest.raises(LoginRefused):
        await users.login("carol", PASSWORD)  # no code
    code = totp.code_at(secret, clock.now)
    assert (await users.login("carol", PASSWORD, code)).has_totp
    with pytest.raises(LoginRefused):
        await users.login("carol", PASSWORD, code)  # replayed
    clock.advance(30)
    await users.login("carol", PASSWORD, totp.code_at(secret, clock.now))


async def test_personal_tokens_hashed_expiring_revocable(
    service: tuple[UserService, Clock],
) -> None:
    users, clock = service
    await users.add("dave", password=PASSWORD, roles=["admin"])
    text, record = await users.create_token("dave", name="laptop", ttl=60)
    assert text.startswith("tpt_") and (await users.authenticate(text)) is not None
    async with users.engine.connect() as conn:
        stored = await conn.scalar(select(user_tokens.c.token_hash))
    assert stored is not None and len(stored) == 32 and text.encode() not in stored
    assert await users.authenticate(text[:-1] + ("A" if text[-1] != "A" else "B")) is None
    clock.advance(60)
    assert await users.authenticate(text) is None  # expired
    second, record = await users.create_token("dave", name="ci")
    assert await users.revoke_token(record.id, user_id="someone-else") is False
    assert await users.revoke_token(record.id, user_id="dave") is True
    assert await users.authenticate(second) is None
    third, _ = await users.create_token("dave", name="x")
    await users.set_state("dave", "disabled")
    await users.set_state("dave", "active")
    assert await users.authenticate(third) is None  # disabling revoked it for good
    with pytest.raises(UserError):
        await users.create_token("dave", name="x", ttl=400 * 86400)


def test_rfc6238_vectors() -> None:
    secret = base64.b32encode(b"12345678901234567890").decode()
    for moment, expected in ((59, "287082"), (1111111109, "081804"), (1234567890, "005924"),
                             (2000000000, "279037")):  # fmt: skip
        assert totp.code_at(secret, moment) == expected
    assert totp.verify(secret, "287082", 59) == 1
    assert totp.verify(secret, "287082", 59, last_step=1) is None
    assert totp.verify(secret, "287082", 59 + 90) is None


@settings(max_examples=60, deadline=None)
@given(code=st.text(max_size=12), moment=st.integers(min_value=0, max_value=2**40))
def test_totp_verify_never_crashes_and_needs_the_right_code(code: str, moment: int) -> None:
    secret = base64.b32encode(b"12345678901234567890").decode()
    step = totp.verify(secret, code, moment)
    if step is not None:
        assert code.strip() == totp.hotp(secret, step)


@settings(max_examples=3, deadline=None)
@given(password=st.text(min_size=12, max_size=40))
def test_password_round_trip(password: str) -> None:
    stored = hash_password(password)
    assert verify_password(stored, password)
    assert not verify_password(stored, password + "!")
    assert not verify_password("not a hash", password)


async def test_repeated_failures_throttle_one_name(service: tuple[UserService, Clock]) -> None:
    users, clock = service
    await users.add("erin", password=PASSWORD)
    for _ in range(10):
        with pytest.raises(LoginRefused) as caught:
            await users.login("erin", "wrong password!")
        assert not isinstance(caught.value, LoginThrottled)
    with pytest.raises(LoginThrottled):
        await users.login("erin", PASSWORD)  # even the right password, for now
    await users.add("fred", password=PASSWORD)
    assert (await users.login("fred", PASSWORD)).id == "fred"  # other names are not affected
    clock.advance(900)
    assert (await users.login("erin", PASSWORD)).id == "erin"


async def test_a_password_reset_revokes_the_users_personal_tokens(
    service: tuple[UserService, Clock],
) -> None:
    users, _ = service
    await users.add("gail", password=PASSWORD)
    await users.add("hank", password=PASSWORD)
    stolen, _ = await users.create_token("gail", name="laptop")
    other, _ = await users.create_token("gail", name="ci")
    bystander, _ = await users.create_token("hank", name="laptop")
    revoked = await users.set_password("gail", PASSWORD + " new")
    assert await users.authenticate(stolen) is None and await users.authenticate(other) is None
    assert revoked == 2
    assert await users.authenticate(bystander) is not None  # other users keep theirs
    with pytest.raises(LoginRefused):
        await users.login("gail", PASSWORD)
    fresh, _ = await users.create_token("gail", name="after")
    assert await users.authenticate(fresh) is not None  # tokens made after the reset work

    # Setting one's own password with a token keeps that token alone.
    kept, _ = await users.create_token("gail", name="this session")
    assert await users.set_password("gail", PASSWORD + " newer", keep_token=kept) == 1
    assert await users.authenticate(kept) is not None and await users.authenticate(fresh) is None
    # Another user's token keeps nothing of this user's.
    assert await users.set_password("gail", PASSWORD + " newest", keep_token=bystander) == 1
    assert await users.authenticate(kept) is None
    with pytest.raises(UserError) as caught:
        await users.set_password("nobody", PASSWORD)
    assert caught.value.status == 404


async def test_the_login_throttle_is_shared_by_nodes_on_one_store(store_url: str) -> None:
    """Two nodes (two services, each with its own engine) on one database: ten failures
    spread over both refuse the name on both, and a burst of parallel guesses passes the
    limit no more than a sequence of them does."""
    one, two = await Store.open(store_url), await Store.open(store_url)
    clock = Clock()
    try:
        cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))  # one master key
        node_a = UserService(one.engine, cipher, clock=clock)
        node_b = UserService(two.engine, cipher, clock=clock)
        await node_a.add("ivy", password=PASSWORD)
        await node_a.add("jay", password=PASSWORD)
        for node in (node_a, node_b) * 5:
            with pytest.raises(LoginRefused) as caught:
                await node.login("ivy", "wrong password!")
            assert not isinstance(caught.value, LoginThrottled)
        for node in (node_a, node_b):
            with pytest.raises(LoginThrottled):
                await node.login("ivy", PASSWORD)  # even the right password, on either node
        clock.advance(900)
        assert (await node_b.login("ivy", PASSWORD)).id == "ivy"

        # A success clears the count: nine failures, a success, nine more are all refused
        # as wrong, not throttled.
        for round_ in range(2):
            for node in (node_a, node_b, node_a) * 3:
                with pytest.raises(LoginRefused) as caught:
                    await node.login("jay", "wrong password!")
                assert not isinstance(caught.value, LoginThrottled), round_
            assert (await node_b.login("jay", PASSWORD)).id == "jay"

        clock.advance(900)
        burst = await asyncio.gather(
            *(node.login("ivy", "wrong password!") for node in (node_a, node_b) * 10),
            return_exceptions=True,
        )
        throttled = [r for r in burst if isinstance(r, LoginThrottled)]
        assert all(isinstance(r, LoginRefused) for r in burst)
        assert len(throttled) == 10  # ten checked the password, whatever their order
    finally:
        await one.close()
        await two.close()


async def test_migration_0011_round_trip(store_url: str) -> None:
    engine = create_async_engine(store_url)

    async def tables() -> set[str]:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))

    try:
        await upgrade(engine, "0010")
        assert "login_failures" not in await tables()
        await upgrade(engine)
        assert "login_failures" in await tables()
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0010"))
        assert "login_failures" not in await tables()
    finally:
        await engine.dispose()
