"""``tether audit verify|search|tail`` offline, as a real process on a real database."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.audit.conftest import Trail, open_trail


def tether(tether_bin: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tether_bin), "audit", *args], env=env, capture_output=True, text=True, timeout=120
    )


def data_dir(trail: Trail) -> str:
    return str(Path(trail.url.removeprefix("sqlite+aiosqlite:///")).parent)


async def test_verify_exit_codes_and_report(
    sqlite_trail: Trail, tether_bin: Path, clean_env: dict[str, str], tmp_path: Path
) -> None:
    await sqlite_trail.append(25)
    where = ["--data-dir", data_dir(sqlite_trail)]
    clean = tether(tether_bin, clean_env, "verify", *where)
    assert clean.returncode == 0, clean.stderr
    assert "audit trail verified" in clean.stdout
    assert "25 events (seq 1 to 25); 2 signed checkpoints" in clean.stdout
    assert "5 events after checkpoint 20 are unanchored" in clean.stdout

    await sqlite_trail.tamper("UPDATE audit_events SET agent = 'nobody' WHERE seq = 14")
    tampered = tether(tether_bin, clean_env, "verify", *where)
    assert tampered.returncode == 1
    assert "audit trail TAMPERED: 1 finding(s)" in tampered.stdout
    assert "event 14: content does not match its hash" in tampered.stdout
    as_json = json.loads(tether(tether_bin, clean_env, "verify", "--json", *where).stdout)
    assert as_json["findings"] == [
        {"seq": 14, "problem": "hash",
         "what": "event 14: content does not match its hash (the event was changed)"}
    ]  # fmt: skip

    missing = tether(tether_bin, clean_env, "verify", "--data-dir", str(tmp_path / "none"))
    assert missing.returncode == 2
    assert missing.stderr.startswith("tether: error: no Tether database at")
    assert not (tmp_path / "none").exists()  # read-only: nothing created


async def test_verify_on_postgresql_through_a_config_file(
    pg_fresh_url: str, tether_bin: Path, clean_env: dict[str, str], tmp_path: Path
) -> None:
    trail = await open_trail(pg_fresh_url)
    try:
        await trail.append(12)
        config = tmp_path / "tether.yaml"
        config.write_text(f"database_url: {pg_fresh_url}\n")
        assert tether(tether_bin, clean_env, "verify", "--config", str(config)).returncode == 0
        await trail.tamper("DELETE FROM audit_events WHERE seq = 3")
        done = tether(tether_bin, clean_env, "verify", "--config", str(config))
        assert done.returncode == 1
        assert "events 3 are missing" in done.stdout or "3 are missing" in done.stdout
    finally:
        await trail.log.close()
        await trail.store.close()


async def test_an_unreadable_trail_exits_2(tmp_path: Path, tether_bin: Path,
                                           clean_env: dict[str, str]) -> None:  # fmt: skip
    (tmp_path / "tether.db").write_bytes(b"this is not a database" * 100)
    done = tether(tether_bin, clean_env, "verify", "--data-dir", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith("tether: error: the audit trail cannot be read")
    assert "Traceback" not in done.stderr


async def test_search_filters_and_output_forms(
    sqlite_trail: Trail, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    await sqlite_trail.append(20)
    where = ["--data-dir", data_dir(sqlite_trail)]
    lines = tether(tether_bin, clean_env, "search", "--agent", "agent-2", "--kind",
                   "sql.statement", "--json", *where).stdout.splitlines()  # fmt: skip
    found = [json.loads(line) for line in lines]
    assert [e["seq"] for e in found] == [3, 15]  # sample(2), sample(14)
    assert found[0]["agent"] == "agent-2" and found[0]["hash"]
    table = tether(tether_bin, clean_env, "search", "--target", "target-1", "-n", "2", *where)
    assert table.returncode == 0
    assert [line.split()[0] for line in table.stdout.splitlines()[2:]] == ["18", "20"]
    since = tether(tether_bin, clean_env, "search", "--since", "1h", "--json", *where)
    assert len(since.stdout.splitlines()) == 20
    until = tether(tether_bin, clean_env, "search", "--until", "2000-01-01", *where)
    assert until.stdout == "" and "no matching events" in until.stderr
    bad = tether(tether_bin, clean_env, "search", "--since", "yesterday", *where)
    assert bad.returncode == 2 and "--since: 'yesterday' is not a time" in bad.stderr
    kind = tether(tether_bin, clean_env, "search", "--kind", "login", *where)
    assert kind.returncode == 2 and "unknown kind 'login'" in kind.stderr


async def test_tail_shows_the_last_events_then_follows_new_ones(
    sqlite_trail: Trail, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    await sqlite_trail.append(8)
    where = ["--data-dir", data_dir(sqlite_trail)]
    last = tether(tether_bin, clean_env, "tail", "-n", "3", "--json", *where)
    assert [json.loads(line)["seq"] for line in last.stdout.splitlines()] == [6, 7, 8]
    follower = subprocess.Popen(
        [str(tether_bin), "audit", "tail", "-f", "-n", "1", "--interval", "0.1",
         "--agent", "agent-0", "--json", *where],
        env=clean_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        assert json.loads(follower.stdout.readline())["seq"] == 7  # sample(6): agent-0
        await sqlite_trail.append(6, start=8)  # events 9-14; agent-0 at 10 and 13
        seen = [json.loads(follower.stdout.readline())["seq"] for _ in range(2)]
        assert seen == [10, 13]
    finally:
        follower.terminate()
        follower.wait(timeout=10)
    plain = tether(tether_bin, clean_env, "tail", "-n", "2", *where)
    assert plain.returncode == 0
    assert [line.split()[0] for line in plain.stdout.splitlines()] == ["13", "14"]
    assert "→ target-1" in plain.stdout and "[allow]" in plain.stdout
    started = time.monotonic()
    assert tether(tether_bin, clean_env, "tail", "-n", "0", *where).stdout == ""
    assert time.monotonic() - started < 60
