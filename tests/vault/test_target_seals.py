"""Target rows are sealed (tether.crypto.seal): a row changed, planted or copied without
the master key is refused, on SQLite and PostgreSQL; rows from before migration 0015 are
refused until ``tether store seal`` adopts them (tether.store.sealing)."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import pytest
from alembic import command
from sqlalchemy import insert, inspect, select, update
from sqlalchemy.ext.asyncio import create_async_engine

from tether.crypto.masterkey import MasterKey
from tether.crypto.revisions import RowRevisions
from tether.crypto.seal import RowSealer
from tether.store.migrate import alembic_config, upgrade
from tether.store.sealing import adopt, shown, unsealed
from tether.vault.schema import targets
from tether.vault.targets import TargetError, TargetStore

from .conftest import T0, Vault

HTTP = {"base_url": "https://api.example.com", "credential": {"type": "bearer", "secret": "t"}}


async def _set(vault: Vault, name: str, **values: Any) -> None:
    async with vault.store.engine.begin() as conn:
        await conn.execute(update(targets).where(targets.c.name == name).values(**values))


async def _refused(vault: Vault, name: str, reason: str) -> None:
    _, fresh = vault.other_node()
    with pytest.raises(TargetError, match=f"stored target '{name}' is refused: {reason}"):
        await fresh.get(name)
    with pytest.raises(TargetError):
        await fresh.list()


@pytest.mark.parametrize(
    "change",
    [
        {"spec": {**HTTP, "base_url": "https://attacker.example"}},
        {"spec": {**HTTP, "credential": {"type": "bearer", "secret": "other"}}},
        {"labels": {"env": "prod"}},
    ],
    ids=["base-url", "secret", "labels"],
)
async def test_a_changed_row_is_refused(
    vault: Vault, change: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    await vault.targets.add("api", "http", HTTP, {"env": "dev"})
    await _set(vault, "api", **change)
    with caplog.at_level(logging.ERROR, "tether.vault.targets"):
        await _refused(vault, "api", "its seal does not verify")
    assert "the row was changed outside Tether" in caplog.text


async def test_a_planted_or_copied_row_is_refused(vault: Vault) -> None:
    await vault.targets.add("api", "http", HTTP)
    async with vault.store.engine.begin() as conn:
        seal = (await conn.execute(select(targets.c.seal))).scalar_one()
        common = {"kind": "http", "labels": {}, "spec": HTTP, "created_at": T0, "updated_at": T0}
        await conn.execute(insert(targets).values(name="planted", **common))
        await conn.execute(insert(targets).values(name="copied", seal=seal, **common))
    await _refused(vault, "planted", "it has no seal")
    await _refused(vault, "copied", "its seal does not verify")


async def test_a_seal_under_another_master_key_is_refused(vault: Vault) -> None:
    await vault.targets.add("api", "http", HTTP)
    other = RowSealer(MasterKey(secrets.token_bytes(32), "attacker"))
    row = {"name": "api", "kind": "http", "labels": {}, "spec": HTTP}
    await _set(vault, "api", seal=other.seal("targets", row))
    await _refused(vault, "api", "its seal does not verify")


async def test_replacing_through_tether_seals_it_again(vault: Vault) -> None:
    await vault.targets.add("api", "http", HTTP)
    await _set(vault, "api", spec={**HTTP, "base_url": "https://attacker.example"})
    await _refused(vault, "api", "its seal does not verify")
    await vault.targets.replace("api", "http", HTTP)
    _, fresh = vault.other_node()
    found = await fresh.get("api")
    assert found is not None and found.spec.base_url == "https://api.example.com"  # type: ignore[union-attr]


async def test_adoption_seals_unsealed_rows_only_and_lists_them(vault: Vault) -> None:
    await vault.targets.add("good", "http", HTTP)
    await vault.targets.add("tampered", "http", HTTP)
    await vault.targets.add("old", "http", HTTP)
    await _set(vault, "old", seal=None)  # as a row written before migration 0015
    await _set(vault, "tampered", spec={**HTTP, "base_url": "https://attacker.example"})
    assert await unsealed(vault.store.engine) == {"targets": ["old"]}
    await _refused(vault, "old", "it has no seal")

    assert await adopt(vault.store.engine, vault.cipher.sealer) == {"targets": ["old"]}
    assert await unsealed(vault.store.engine) == {}
    _, fresh = vault.other_node()
    assert await fresh.get("old") is not None
    await _refused(vault, "tampered", "its seal does not verify")  # never blessed
    assert await adopt(vault.store.engine, vault.cipher.sealer) == {}

    # A row planted after the adoption has no seal: refused until an operator adopts it.
    await _set(vault, "good", seal=None)
    await _refused(vault, "good", "it has no seal")


async def test_usable_leaves_refused_rows_out(vault: Vault) -> None:
    for name in ("a", "b", "c"):
        await vault.targets.add(name, "http", HTTP)
    await _set(vault, "b", spec={**HTTP, "base_url": "https://attacker.example"})
    _, fresh = vault.other_node()
    assert [t.name for t in await fresh.usable("http")] == ["a", "c"]
    assert await fresh.usable("ssh") == []


SEALED_TABLES = ("targets", "admin_tokens", "join_tokens", "users", "user_tokens")


async def test_migration_0015_round_trip(store_url: str) -> None:
    engine = create_async_engine(store_url)

    async def with_seal() -> set[str]:
        def tables(sync: Any) -> set[str]:
            found = inspect(sync)
            return {t for t in SEALED_TABLES if "seal" in {c["name"] for c in found.get_columns(t)}}

        async with engine.connect() as conn:
            return await conn.run_sync(tables)

    try:
        await upgrade(engine, "0014")
        assert await with_seal() == set()
        await upgrade(engine)
        assert await with_seal() == set(SEALED_TABLES)
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0014"))
        assert await with_seal() == set()
    finally:
        await engine.dispose()


def test_keys_are_shown_escaped() -> None:
    assert shown("api") == "api"
    assert shown("api\nsealed targets x") == "'api\\nsealed targets x'"
    assert shown("\x1b[2Kx") == "'\\x1b[2Kx'"
    assert shown("") == "''" and shown("a b") == "'a b'"
    assert shown("\u0430pi") == "'\\u0430pi'"  # a Cyrillic a


async def test_a_target_put_back_older_than_seen_is_refused(
    vault: Vault, caplog: pytest.LogCaptureFixture
) -> None:
    """Migration 0025 (tether.crypto.revisions): a target moved to a new address, or
    removed, then its earlier row (Tether's seal and all) written back. A node that saw the
    change refuses the earlier row; one that never did admits it (the control); replacing
    it through Tether writes it afresh."""
    node = TargetStore(vault.store.engine, vault.cipher.sealer.witnessed(RowRevisions()))
    await node.add("api", "http", {**HTTP, "base_url": "https://old.example"})
    async with vault.store.engine.connect() as conn:
        old = dict((await conn.execute(select(targets))).mappings().one())
    assert old["revision"] == 1
    await node.replace("api", "http", HTTP)  # moved: the old address is not ours any more
    await _set(vault, "api", **{k: v for k, v in old.items() if k != "name"})
    _, unaware = vault.other_node()
    assert str((await unaware.get("api")).spec.base_url) == "https://old.example"  # type: ignore[union-attr]
    with (
        caplog.at_level(logging.ERROR, "tether.crypto.seal"),
        pytest.raises(TargetError, match="'api' is refused: its row is older than one this"),
    ):
        await node.get("api")
    assert "target 'api' refused: its row is revision 1, older than revision 2" in caplog.text
    assert await node.usable() == []
    fresh = await node.replace("api", "http", HTTP)  # the way back
    assert (await node.get("api")) == fresh

    await node.remove("api")  # removed, then put back
    async with vault.store.engine.begin() as conn:
        await conn.execute(insert(targets).values(old))
    with pytest.raises(TargetError, match="older than one this node saw"):
        await node.get("api")
