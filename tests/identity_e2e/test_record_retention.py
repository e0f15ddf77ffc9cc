"""Records of credentials and join tokens deleted once past ``identity.record_retention``
(tether.store.credentials.prune_records), on SQLite and PostgreSQL: never a record of a renewal
family that still has one in retention (revoking an old token then still ends its family),
never with a retention of 0, and by the node's watcher (``maintain``) at its pace."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import func, select

from tests.identity_e2e.conftest import Stack, build_service
from tests.identity_e2e.test_renewal_family import jti, renew
from tether.identity.config import IdentityConfig
from tether.store.schema import credentials, join_tokens

HOUR = 3600


async def _counts(stack: Stack) -> tuple[int, int]:
    async with stack.engine.connect() as conn:
        records = (await conn.execute(select(func.count()).select_from(credentials))).scalar()
        joins = (await conn.execute(select(func.count()).select_from(join_tokens))).scalar()
    return int(records or 0), int(joins or 0)


async def _jtis(stack: Stack) -> set[str]:
    async with stack.engine.connect() as conn:
        return set((await conn.execute(select(credentials.c.jti))).scalars())


async def test_records_go_once_their_whole_family_is_past_retention(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    stack.service = await build_service(stack.store, stack.clock, stack.cipher,
                                        record_retention=HOUR)  # fmt: skip
    bot, other = await stack.new_agent("bot"), await stack.new_agent("other")
    await stack.join(bot)  # tokens expire at +600 s, join tokens at +900 s
    await stack.join(other)
    stack.clock.advance(500)
    renewed = await renew(stack, bot)  # same family, expires at +1100 s
    assert await _counts(stack) == (3, 2)

    # An hour after +1000 s: the first tokens and the join tokens are past retention, bot's
    # renewal is not, so its family stays whole.
    stack.clock.advance(1000 + HOUR - 500)
    assert await stack.service.prune_records() == 3  # other's record, both join tokens
    assert await _jtis(stack) == {jti(bot), jti(renewed)}
    assert await _counts(stack) == (2, 0)
    done = await stack.service.revoke_reporting("token", jti(renewed), reason="r", by="ops")
    assert done.family == jti(bot)  # the family is still found from the old token's record

    with caplog.at_level(logging.INFO, "tether.identity.service"):
        stack.clock.advance(600)
        assert await stack.service.prune_records() == 2
    assert "deleted 2 record(s) of credentials and join tokens expired before" in caplog.text
    assert await _counts(stack) == (0, 0)
    assert await stack.service.prune_records() == 0


async def test_a_retention_of_zero_keeps_every_record(stack: Stack) -> None:
    stack.service = await build_service(stack.store, stack.clock, stack.cipher,
                                        record_retention=0)  # fmt: skip
    await stack.join(await stack.new_agent("bot"))
    stack.clock.advance(3650 * 86400)
    assert await stack.service.prune_records() == 0
    assert await _counts(stack) == (1, 1)


async def test_the_watcher_deletes_them_every_ten_minutes(stack: Stack) -> None:
    await stack.join(await stack.new_agent("bot"))  # the default retention: 30 days
    stack.clock.advance(30 * 86400 + 300)
    await stack.service.maintain()
    assert await _counts(stack) == (1, 1)  # expired 30 days less 5 minutes ago: kept
    stack.clock.advance(400)
    await stack.service.maintain()  # past retention now, but the last run was 400 s ago
    assert await _counts(stack) == (1, 1)
    stack.clock.advance(300)
    await stack.service.maintain()
    assert await _counts(stack) == (0, 0)


def test_the_retention_is_zero_or_an_hour_at_least() -> None:
    assert IdentityConfig(record_retention=0).record_retention == 0
    assert IdentityConfig(record_retention=HOUR).record_retention == HOUR
    with pytest.raises(ValueError, match="record_retention must be 0"):
        IdentityConfig(record_retention=59)
