"""The store: migrations at open, policy load records (on SQLite and PostgreSQL: ``store_url``)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tether.store import PolicyLoad, Store, StoreError
from tether.store.migrate import alembic_config


def url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


async def test_open_creates_the_directory_and_the_table(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "dir" / "tether.db"
    store = await Store.open(url(db))
    await store.close()
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        columns = [row[1] for row in conn.execute("PRAGMA table_info(policy_loads)")]
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"policy_loads", "alembic_version"} <= tables
    assert columns == [
        "id", "version", "loaded_at", "file_count", "rule_count", "status", "error"
    ]  # fmt: skip
    assert revision == ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_records_round_trip_newest_first(store_url: str) -> None:
    store = await Store.open(store_url)
    try:
        when = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
        first = await store.record_policy_load(
            PolicyLoad(status="active", file_count=3, version="sha256:ab", rule_count=9,
                       loaded_at=when)
        )  # fmt: skip
        second = await store.record_policy_load(
            PolicyLoad(status="rejected", file_count=3, error="a.yaml:2: bad")
        )
        loads = await store.policy_loads()
    finally:
        await store.close()
    assert second > first
    assert [load.id for load in loads] == [second, first]
    assert loads[1] == PolicyLoad(
        status="active", file_count=3, version="sha256:ab", rule_count=9, loaded_at=when,
        id=first,
    )  # fmt: skip
    assert loads[0].status == "rejected"
    assert loads[0].error == "a.yaml:2: bad"
    assert loads[0].version is None
    assert loads[0].loaded_at.tzinfo is UTC


async def test_reopening_keeps_the_data(store_url: str) -> None:
    store = await Store.open(store_url)
    await store.record_policy_load(PolicyLoad(status="active", file_count=1, version="v"))
    await store.close()
    store = await Store.open(store_url)
    try:
        assert len(await store.policy_loads()) == 1
    finally:
        await store.close()


async def test_status_is_constrained(store_url: str) -> None:
    store = await Store.open(store_url)
    try:
        async with store.engine.begin() as conn:
            with pytest.raises(IntegrityError):
                await conn.execute(
                    text(
                        "INSERT INTO policy_loads (loaded_at, file_count, status) "
                        "VALUES ('2026-01-01', 0, 'maybe')"
                    )
                )
    finally:
        await store.close()


async def test_unusable_location_is_a_clean_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create"):
        await Store.open(url(blocker / "sub" / "t.db"))


async def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory.db"
    directory.mkdir()
    with pytest.raises(StoreError, match=r"a-directory\.db is a directory"):
        await Store.open(url(directory))


async def test_a_file_that_is_not_a_database_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    path.write_bytes(b"definitely not SQLite" * 100)
    with pytest.raises(StoreError, match="cannot open the database: file is not a database"):
        await Store.open(url(path))


async def test_malformed_url() -> None:
    with pytest.raises(StoreError, match="malformed database URL"):
        await Store.open("not a url")
