"""Review s19 (policy in use: reload): the watcher against files written the way editors,
copies and checkouts write them, and policy directories holding what is not a file."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.policy import PolicySet
from tether.policy.errors import PolicyLoadError
from tether.policyfiles import load_policy_dir, read_policy_dir
from tether.policywatch import PolicyReloader, load_initial
from tether.store import Store

ALLOW = """\
rules:
  - id: allow-all
    effect: allow
    mcp: {tools: ["*"]}
"""
DENY = """\
  - id: deny-drop
    effect: deny
    mcp: {tools: [drop]}
"""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'data' / 't.db'}")
    yield store
    await store.close()


async def test_a_file_written_in_two_halves_is_never_in_force_half_written(
    tmp_path: Path, store: Store
) -> None:
    # The first half (the allow rule) is valid YAML on its own: the watcher put the set
    # without the deny rule in force until the second half arrived.
    directory = tmp_path / "pol"
    directory.mkdir()
    (directory / "a.yaml").write_text(ALLOW + DENY, encoding="utf-8")
    holder = await load_initial(directory, store)
    in_force: list[list[str]] = []
    replace = holder.replace

    def record(policy_set: PolicySet) -> PolicySet:
        in_force.append([rule.id for rule in policy_set.rules])
        return replace(policy_set)

    holder.replace = record  # type: ignore[method-assign]
    stop = asyncio.Event()
    watcher = asyncio.create_task(PolicyReloader(directory, store, holder).watch(stop))
    await asyncio.sleep(0.3)  # let the watch start
    with (directory / "a.yaml").open("w", encoding="utf-8") as file:
        file.write(ALLOW + "  # edited\n")
        file.flush()
        await asyncio.sleep(0.3)  # a writer pausing mid-file
        file.write(DENY)
    async with asyncio.timeout(20):
        while not in_force:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        stop.set()
        await watcher
    assert in_force == [["allow-all", "deny-drop"]]
    assert holder.current.decide(_mcp("drop")).decision == "deny"


def _mcp(tool: str) -> dict[str, object]:
    return {
        "agent": {"id": "bot"},
        "target": {"name": "t"},
        "action": {"mcp": {"tool": tool, "arguments": {}}},
    }


async def test_a_reload_of_files_that_keep_changing_is_refused_and_the_set_stays(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tether.policywatch.SETTLE_SECONDS", 0.01)
    directory = tmp_path / "pol"
    directory.mkdir()
    (directory / "a.yaml").write_text(ALLOW + DENY, encoding="utf-8")
    holder = await load_initial(directory, store)
    first = holder.current
    reads = iter(range(1000))

    def read_policy_dir(path: Path) -> list[object]:
        return [next(reads)]  # a new content at every read

    monkeypatch.setattr("tether.policywatch.read_policy_dir", read_policy_dir)
    assert not await PolicyReloader(directory, store, holder).reload()
    assert holder.current is first
    newest = (await store.policy_loads())[0]
    assert newest.status == "rejected"
    assert newest.error is not None and "kept changing" in newest.error


def test_a_named_pipe_in_the_policy_directory_is_a_load_error_not_a_hang(tmp_path: Path) -> None:
    # The read waited for a writer for ever: `tether serve` never started, and a reload
    # never ended, so no later change was ever loaded.
    (tmp_path / "a.yaml").write_text(ALLOW, encoding="utf-8")
    os.mkfifo(tmp_path / "b.yaml")
    outcome: list[BaseException | object] = []

    def read() -> None:
        try:
            outcome.append(read_policy_dir(tmp_path))
        except PolicyLoadError as error:
            outcome.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # blocked in the read: give it its end of file, then fail
        os.close(os.open(tmp_path / "b.yaml", os.O_WRONLY))
        reader.join()
        pytest.fail("reading the policy directory blocked on a named pipe")
    (error,) = outcome
    assert str(error) == "b.yaml: not a regular file"


def test_a_link_to_a_device_is_a_load_error_not_an_endless_read(tmp_path: Path) -> None:
    # A link to /dev/zero was read until the node ran out of memory (23 GB here); /dev/null
    # (read as an empty file before) shows the same check without that risk.
    (tmp_path / "a.yaml").symlink_to("/dev/null")
    with pytest.raises(PolicyLoadError, match=r"^a\.yaml: not a regular file$"):
        read_policy_dir(tmp_path)


def test_a_linked_directory_of_policies_is_read_and_a_cycle_is_cut(tmp_path: Path) -> None:
    # A team's directory linked into the policy directory was skipped without a word, and
    # with it the deny rules it held: drop was allowed.
    team = tmp_path / "team"
    team.mkdir()
    (team / "deny.yaml").write_text("rules:\n" + DENY, encoding="utf-8")
    (team / "back").symlink_to(tmp_path / "pol")  # a cycle through the root
    (team / "self").symlink_to(team)  # a cycle through itself
    directory = tmp_path / "pol"
    directory.mkdir()
    (directory / "a.yaml").write_text(ALLOW, encoding="utf-8")
    (directory / "team").symlink_to(team)
    assert [source.name for source in read_policy_dir(directory)] == ["a.yaml", "team/deny.yaml"]
    assert load_policy_dir(directory).decide(_mcp("drop")).decision == "deny"


@pytest.mark.parametrize("name", ["deny.YAML", "sub/deny.Yml"])
def test_a_policy_file_named_in_upper_case_is_a_load_error_not_left_out(
    tmp_path: Path, name: str
) -> None:
    (tmp_path / "a.yaml").write_text(ALLOW, encoding="utf-8")
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_text("rules:\n" + DENY, encoding="utf-8")
    with pytest.raises(PolicyLoadError, match=rf"^{name}: not read: policy files are named"):
        read_policy_dir(tmp_path)
