"""Loading and reloading the policy directory into a holder, with a record of each attempt."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.policywatch import LoadRefused, PolicyReloader, load_initial
from tether.store import Store

RULES = """\
rules:
  - id: {id}
    effect: allow
    agents: [bot]
    mcp: {{tools: [search]}}
"""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'data' / 't.db'}")
    yield store
    await store.close()


def write(directory: Path, name: str, text: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(text, encoding="utf-8")


async def test_initial_load_is_recorded(tmp_path: Path, store: Store) -> None:
    write(tmp_path / "pol", "a.yaml", RULES.format(id="a"))
    holder = await load_initial(tmp_path / "pol", store)
    (load,) = await store.policy_loads()
    assert (load.status, load.version, load.file_count, load.rule_count) == (
        "active", holder.current.version, 1, 1
    )  # fmt: skip


async def test_initial_load_refused_is_recorded(tmp_path: Path, store: Store) -> None:
    write(tmp_path / "pol", "a.yaml", "rules: [oops")
    with pytest.raises(LoadRefused, match=r"^a\.yaml:"):
        await load_initial(tmp_path / "pol", store)
    (load,) = await store.policy_loads()
    assert (load.status, load.version, load.file_count) == ("rejected", None, 1)
    assert load.error is not None and load.error.startswith("a.yaml:")


async def test_missing_directory_is_refused(tmp_path: Path, store: Store) -> None:
    with pytest.raises(LoadRefused, match="policy directory not found"):
        await load_initial(tmp_path / "nope", store)


async def test_reload_replaces_a_valid_set(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "pol"
    write(directory, "a.yaml", RULES.format(id="a"))
    holder = await load_initial(directory, store)
    first = holder.current.version
    write(directory, "b.yaml", RULES.format(id="b"))
    with caplog.at_level(logging.INFO, logger="tether.policywatch"):
        assert await PolicyReloader(directory, store, holder).reload() is True
    assert holder.current.version != first
    assert [rule.id for rule in holder.current.rules] == ["a", "b"]
    assert f"policy set {holder.current.version} in force: 2 rules" in caplog.text
    newest = (await store.policy_loads())[0]
    assert (newest.status, newest.version, newest.file_count) == (
        "active", holder.current.version, 2
    )  # fmt: skip


async def test_reload_refuses_an_invalid_set_and_keeps_the_old(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "pol"
    write(directory, "a.yaml", RULES.format(id="a"))
    holder = await load_initial(directory, store)
    before = holder.current
    write(directory, "b.yaml", RULES.format(id="a"))  # duplicate rule id
    with caplog.at_level(logging.ERROR, logger="tether.policywatch"):
        assert await PolicyReloader(directory, store, holder).reload() is False
    assert holder.current is before
    assert f"policy reload refused, {before.version} stays in force: b.yaml" in caplog.text
    newest = (await store.policy_loads())[0]
    assert (newest.status, newest.file_count) == ("rejected", 2)


async def test_unchanged_reload_is_not_recorded(tmp_path: Path, store: Store) -> None:
    directory = tmp_path / "pol"
    write(directory, "a.yaml", RULES.format(id="a"))
    holder = await load_initial(directory, store)
    write(directory, ".a.yaml.swp", "editor noise")
    assert await PolicyReloader(directory, store, holder).reload() is False
    assert len(await store.policy_loads()) == 1


async def test_watch_reloads_on_change_and_stops(tmp_path: Path, store: Store) -> None:
    directory = tmp_path / "pol"
    write(directory, "a.yaml", RULES.format(id="a"))
    holder = await load_initial(directory, store)
    stop = asyncio.Event()
    watcher = asyncio.create_task(PolicyReloader(directory, store, holder).watch(stop))
    first = holder.current.version
    async with asyncio.timeout(15):
        while holder.current.version == first:
            write(directory, "a.yaml", RULES.format(id="renamed"))
            await asyncio.sleep(0.2)
        stop.set()
        await watcher
    assert [rule.id for rule in holder.current.rules] == ["renamed"]


async def test_watch_survives_the_directory_being_replaced(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("tether.policywatch.RETRY_SECONDS", 0.1)
    directory = tmp_path / "pol"
    write(directory, "a.yaml", RULES.format(id="a"))
    holder = await load_initial(directory, store)
    first = holder.current
    stop = asyncio.Event()
    watcher = asyncio.create_task(PolicyReloader(directory, store, holder).watch(stop))
    await asyncio.sleep(0.3)  # let the watch start
    async with asyncio.timeout(15):
        (directory / "a.yaml").unlink()
        directory.rmdir()
        while "watching" not in caplog.text:
            await asyncio.sleep(0.05)
        assert holder.current is first  # nothing to load: the set in force stays
        write(directory, "a.yaml", RULES.format(id="back"))
        while [rule.id for rule in holder.current.rules] != ["back"]:
            await asyncio.sleep(0.05)
        stop.set()
        await watcher
    newest = (await store.policy_loads())[0]
    assert (newest.status, newest.version) == ("active", holder.current.version)
