"""The secret store on SQLite and PostgreSQL: encryption at rest, versions, cache, races."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, update

from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.proxy.http.flight import SingleFlight
from tether.vault.schema import vault_secrets
from tether.vault.secrets import (
    MAX_SECRET_BYTES,
    SecretError,
    SecretExists,
    SecretNotFound,
    SecretStore,
)

from .conftest import Vault

VALUE = b"sk_live_0123456789abcdef"


async def stored_row(vault: Vault, name: str) -> tuple[str, int]:
    async with vault.store.engine.connect() as conn:
        row = (
            await conn.execute(
                select(vault_secrets.c.ciphertext, vault_secrets.c.version).where(
                    vault_secrets.c.name == name
                )
            )
        ).one()
    return row.ciphertext, row.version


async def test_put_get_and_ciphertext_at_rest(vault: Vault) -> None:
    info = await vault.secrets.put("billing/api-token", VALUE, description="Stripe")
    assert (info.name, info.version, info.description) == ("billing/api-token", 1, "Stripe")
    assert await vault.secrets.get("billing/api-token") == VALUE
    ciphertext, version = await stored_row(vault, "billing/api-token")
    assert version == 1
    assert VALUE.decode() not in ciphertext
    assert VALUE not in ciphertext.encode()
    # The same value stored twice encrypts differently (a fresh data key each time).
    await vault.secrets.put("billing/api-token", VALUE)
    assert (await stored_row(vault, "billing/api-token"))[0] != ciphertext


async def test_ciphertext_moved_to_another_name_fails(vault: Vault) -> None:
    await vault.secrets.put("a", b"value-a")
    await vault.secrets.put("b", b"value-b")
    moved, _ = await stored_row(vault, "a")
    async with vault.store.engine.begin() as conn:
        await conn.execute(
            update(vault_secrets).where(vault_secrets.c.name == "b").values(ciphertext=moved)
        )
    fresh, _ = vault.other_node()
    with pytest.raises(SecretError) as caught:
        await fresh.get("b")
    assert "authentication failed" in str(caught.value)
    assert "value-a" not in str(caught.value)


async def test_another_master_key_cannot_read(vault: Vault) -> None:
    await vault.secrets.put("k", b"v")
    other = SecretStore(vault.store.engine, EnvelopeCipher(MasterKey(b"\x01" * 32, "other")))
    with pytest.raises(SecretError, match="another master key"):
        await other.get("k")


async def test_rotation_is_a_new_version_visible_at_next_get(vault: Vault) -> None:
    created = await vault.secrets.put("db", b"one", description="first")
    assert await vault.secrets.get("db") == b"one"
    vault.clock.advance(60)
    rotated = await vault.secrets.put("db", b"two")
    assert rotated.version == 2
    assert rotated.description == "first"  # kept when not given
    assert rotated.created_at == created.created_at
    assert rotated.updated_at > created.updated_at
    assert await vault.secrets.get("db") == b"two"  # this node: at once, despite the cache
    assert await vault.secrets.get_versioned("db") == (b"two", 2)
    assert (await vault.secrets.info("db")).version == 2


async def test_other_node_sees_change_within_ttl(vault: Vault) -> None:
    await vault.secrets.put("shared", b"old")
    other, _ = vault.other_node()
    assert await other.get("shared") == b"old"
    await vault.secrets.put("shared", b"new")
    assert await other.get("shared") == b"old"  # cached on the other node
    vault.ticker.now += 0.99
    assert await other.get("shared") == b"old"
    vault.ticker.now += 0.02
    assert await other.get("shared") == b"new"  # past cache_ttl (1 s)
    vault.ticker.now -= 100  # a clock going back expires the entry instead of keeping it
    await vault.secrets.delete("shared")
    with pytest.raises(SecretNotFound):
        await other.get("shared")


async def test_modes_create_and_rotate(vault: Vault) -> None:
    with pytest.raises(SecretNotFound):
        await vault.secrets.put("x", b"1", mode="rotate")
    await vault.secrets.put("x", b"1", mode="create")
    with pytest.raises(SecretExists):
        await vault.secrets.put("x", b"2", mode="create")
    assert (await vault.secrets.put("x", b"3", mode="rotate")).version == 2
    assert await vault.secrets.get("x") == b"3"


async def test_concurrent_puts_lose_no_version(vault: Vault) -> None:
    count = 12
    infos = await asyncio.gather(
        *(vault.secrets.put("race", f"v{i}".encode()) for i in range(count))
    )
    assert sorted(info.version for info in infos) == list(range(1, count + 1))
    last = max(infos, key=lambda info: info.version)
    _, version = await stored_row(vault, "race")
    assert version == count
    # The value stored is the one written with the highest version.
    expected = {info.version: f"v{i}".encode() for i, info in enumerate(infos)}[last.version]
    assert await vault.secrets.get("race") == expected


async def test_list_info_delete(vault: Vault) -> None:
    await vault.secrets.put("b", b"1")
    await vault.secrets.put("a", b"1", description="d")
    await vault.secrets.put("tether/ssh-target-ca", b"internal")
    names = [info.name for info in await vault.secrets.list()]
    assert names == ["a", "b", "tether/ssh-target-ca"]
    await vault.secrets.delete("a")
    with pytest.raises(SecretNotFound):
        await vault.secrets.get("a")
    with pytest.raises(SecretNotFound):
        await vault.secrets.info("a")
    with pytest.raises(SecretNotFound):
        await vault.secrets.delete("a")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ok", b"", "must not be empty"),
        ("ok", b"x" * (MAX_SECRET_BYTES + 1), "at most"),
        ("../etc", b"x", "invalid secret name"),
        ("a//b", b"x", "invalid secret name"),
        ("", b"x", "invalid secret name"),
    ],
)
async def test_refusals(vault: Vault, name: str, value: bytes, message: str) -> None:
    with pytest.raises(SecretError, match=message):
        await vault.secrets.put(name, value)


async def test_value_never_in_repr_or_errors(vault: Vault) -> None:
    await vault.secrets.put("hidden", VALUE)
    await vault.secrets.get("hidden")
    assert VALUE.decode() not in repr(vault.secrets)
    assert VALUE.decode() not in repr(await vault.secrets.info("hidden"))


async def test_a_read_in_flight_before_a_rotation_is_not_shared_after_it(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The HTTP broker shares one store read between concurrent requests (SingleFlight). A
    # request that arrives once a rotation has returned must not join a read that took the
    # old value from the database before the rotation: it would inject the old secret.
    await vault.secrets.put("api", b"old-value")
    read = vault.secrets._load
    gate, reading = asyncio.Event(), asyncio.Event()

    async def slow_load(name: str) -> object:
        value = await read(name)
        reading.set()
        await gate.wait()  # the row is read; the answer is not back yet
        return value

    monkeypatch.setattr(vault.secrets, "_load", slow_load)
    store = vault.secrets
    flight = SingleFlight(store.get, lambda: store.generation, store.cached)
    vault.ticker.now += 10  # the store's own cache has expired
    before = asyncio.create_task(flight.get("api"))
    await reading.wait()
    await store.put("api", b"new-value")  # done: the admin has its answer
    after = asyncio.create_task(flight.get("api"))
    await asyncio.sleep(0.05)
    gate.set()
    assert await before == b"old-value"  # it asked before the change
    assert await after == b"new-value"  # it asked after: never the read from before


async def test_the_cache_peek_answers_what_get_answers_and_nothing_stale(vault: Vault) -> None:
    # The broker answers from the store's cache without a task (SingleFlight's peek): it
    # must answer exactly what get() would, and miss whenever get() would go to the store.
    store = vault.secrets
    assert store.cached("api") == (False, None)  # never read
    await store.put("api", b"v1")
    assert store.cached("api") == (False, None)  # a change empties the cache
    assert await store.get("api") == b"v1"
    assert store.cached("api") == (True, b"v1")
    await store.put("api", b"v2")  # a rotation through this node: seen at once
    assert store.cached("api") == (False, None)
    assert await store.get("api") == b"v2"
    vault.ticker.now += 10  # expired: another node's rotation is read again
    assert store.cached("api") == (False, None)
    with pytest.raises(SecretNotFound):
        await store.get("missing")
    assert store.cached("missing") == (False, None)  # cached as missing: get() raises


async def test_a_target_peek_answers_what_get_answers(vault: Vault) -> None:
    targets = vault.targets
    assert targets.cached("billing") == (False, None)
    assert await targets.get("billing") is None  # unknown: cached as such
    assert targets.cached("billing") == (True, None)
    vault.ticker.now += 10
    assert targets.cached("billing") == (False, None)
