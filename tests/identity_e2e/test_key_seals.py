"""Signing key rows changed in the database behind Tether's back (migration 0020; docs/vault.md,
"Tampering with the database"), on SQLite and PostgreSQL. A rotated-out access-token key
whose window was pushed back verifies nothing; an active key (the token signer or a CA)
whose row does not verify stops the node from starting, naming the key and what to do; an
operator's ``tether store seal`` adopts a key from before the seals, never a tampered one."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from tests.identity_e2e.conftest import Agent, Stack, build_service
from tether.identity.errors import TokenInvalid
from tether.identity.keystore import KeysUnverified
from tether.store.schema import signing_keys
from tether.store.sealing import adopt, unsealed


async def _change(stack: Stack, kid: str, **values: Any) -> None:
    async with stack.engine.begin() as conn:
        await conn.execute(update(signing_keys).where(signing_keys.c.kid == kid).values(values))


async def _kid(stack: Stack, purpose: str) -> str:
    async with stack.engine.connect() as conn:
        query = signing_keys.select().where(
            signing_keys.c.purpose == purpose, signing_keys.c.state == "active"
        )
        return str((await conn.execute(query)).mappings().one()["kid"])


async def test_a_rotated_out_key_kept_in_the_database_verifies_nothing(
    stack: Stack, bot: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    old_kid = stack.service.keys.ring.active.kid
    await stack.service.rotate_keys()
    # The key leaked, so it was rotated; the writer keeps it verifying for a year more.
    await _change(stack, old_kid, retire_after=stack.clock() + timedelta(days=365))
    with caplog.at_level(logging.ERROR, "tether.crypto.seal"):
        stack.service = await build_service(stack.store, stack.clock, stack.cipher)
    assert f"access-token signing key {old_kid!r} refused" in caplog.text
    kids = {k["kid"] for k in stack.service.keys.ring.jwks(stack.clock.now)["keys"]}
    assert old_kid not in kids
    with pytest.raises(TokenInvalid, match="unknown signing key"):
        await stack.present(bot)  # bot's token was signed by the old key


async def test_an_untouched_rotation_still_verifies_old_tokens(stack: Stack, bot: Agent) -> None:
    """The control of the test above: the same steps without the change."""
    await stack.service.rotate_keys()
    stack.service = await build_service(stack.store, stack.clock, stack.cipher)
    assert (await stack.present(bot)).sub == "bot"


@pytest.mark.parametrize("purpose", ["access-token", "ssh-user-ca", "x509-ca"])
@pytest.mark.parametrize(
    "change",
    [{"seal": None}, {"seal": "A" * 43}, {"public": "a public key of the writer's"}],
    ids=["no-seal", "made-up-seal", "changed"],
)
async def test_an_active_key_that_does_not_verify_stops_the_node(
    stack: Stack, purpose: str, change: dict[str, Any]
) -> None:
    kid = await _kid(stack, purpose)
    await _change(stack, kid, **change)
    with pytest.raises(KeysUnverified) as refused:
        await build_service(stack.store, stack.clock, stack.cipher)
    message = str(refused.value)
    assert f"the active {purpose} key {kid!r} does not verify" in message
    assert "tether store seal" in message
    async with stack.engine.connect() as conn:  # nothing was replaced or rotated on its own
        rows = (await conn.execute(signing_keys.select())).mappings().all()
    assert [r["kid"] for r in rows if r["purpose"] == purpose] == [kid]
    # Adoption trusts a row without a seal (from before the upgrade), never a wrong seal.
    sealed = await adopt(stack.engine, stack.cipher.sealer)
    if change == {"seal": None}:
        assert sealed == {"signing_keys": [kid]}
        assert await unsealed(stack.engine) == {}
        await build_service(stack.store, stack.clock, stack.cipher)
    else:
        assert sealed == {}
        with pytest.raises(KeysUnverified):
            await build_service(stack.store, stack.clock, stack.cipher)
        # docs/vault.md: an operator retires the key; the next start makes a new one.
        await _change(stack, kid, state="retired")
        await build_service(stack.store, stack.clock, stack.cipher)
        assert await _kid(stack, purpose) != kid
