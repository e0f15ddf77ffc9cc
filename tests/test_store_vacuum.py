"""``tether store vacuum`` (tether.store.vacuum): a SQLite database rebuilt without its free
pages, node stopped, every row as it was (seals and the audit chain verify after); refused
under a serving node, on PostgreSQL, without the space it needs (nothing changed)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.identity_e2e.test_e2e_serve import TOKEN, Cluster
from tether.store.vacuum import (
    VacuumError,
    on_disk,
    space_problem,
    sqlite_database,
    vacuum_sqlite,
)


def _scratch(path: Path, mib: int) -> None:
    """Rows of ``mib`` MiB written then deleted: free pages the file keeps."""
    with closing(sqlite3.connect(path)) as database:
        database.execute("CREATE TABLE scratch (k INTEGER PRIMARY KEY, v BLOB)")
        database.executemany("INSERT INTO scratch (v) VALUES (?)",
                             [(bytes(1024),) for _ in range(mib * 1024)])  # fmt: skip
        database.commit()
        database.execute("DROP TABLE scratch")
        database.commit()
        database.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _rows(path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as database:
        tables = [r[0] for r in database.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]  # fmt: skip
        return [(t, *row) for t in tables for row in database.execute(f'SELECT * FROM "{t}"')]


def test_free_pages_are_given_back_and_rows_kept(tmp_path: Path) -> None:
    path = tmp_path / "tether.db"
    with closing(sqlite3.connect(path)) as database:
        database.execute("PRAGMA journal_mode=WAL")
        database.execute("CREATE TABLE kept (id TEXT PRIMARY KEY, n INTEGER)")
        database.executemany("INSERT INTO kept VALUES (?, ?)", [(f"k{i}", i) for i in range(500)])
        database.commit()
    _scratch(path, 4)
    rows, before = _rows(path), on_disk(path)
    done = vacuum_sqlite(path)
    assert done.before == before and done.after == on_disk(path)
    assert before - done.after > 4 * 1000 * 1024
    assert _rows(path) == rows
    with closing(sqlite3.connect(path)) as database:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert database.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    wal = path.with_name("tether.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_not_enough_space_is_refused_before_anything_changes(tmp_path: Path) -> None:
    path = tmp_path / "tether.db"
    with closing(sqlite3.connect(path)) as database:
        database.execute("CREATE TABLE kept (id INTEGER PRIMARY KEY)")
        database.commit()
    _scratch(path, 1)
    content = path.read_bytes()
    with pytest.raises(VacuumError, match=r"not enough space to vacuum .*bytes free"):
        vacuum_sqlite(path, free=lambda _: 1000)
    assert path.read_bytes() == content


def test_the_space_a_rebuild_needs() -> None:
    assert space_problem(100, 200, 0, same_device=True) is None
    assert "200 bytes free on the database's disk, 199 are" in str(
        space_problem(100, 199, 10**9, same_device=True)
    )
    assert space_problem(100, 100, 100, same_device=False) is None
    assert "temporary directory, 99" in str(space_problem(100, 10**9, 99, same_device=False))
    assert "database's disk, 99" in str(space_problem(100, 99, 10**9, same_device=False))


def test_what_is_not_vacuumed_here(tmp_path: Path) -> None:
    with pytest.raises(VacuumError, match=r"postgresql: its autovacuum .* VACUUM FULL"):
        sqlite_database("postgresql+asyncpg://tether@db/tether")
    assert sqlite_database(f"sqlite+aiosqlite:///{tmp_path}/t.db") == tmp_path / "t.db"
    with pytest.raises(VacuumError, match="no such database"):
        vacuum_sqlite(tmp_path / "absent.db")
    (tmp_path / "garbage.db").write_bytes(b"not a database" * 100)
    with pytest.raises(VacuumError, match="VACUUM failed, the database is unchanged"):
        vacuum_sqlite(tmp_path / "garbage.db")


@pytest.fixture
def cluster(tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]) -> Iterator[Cluster]:
    made = Cluster(tmp_path, tether_bin, {**clean_env, "TETHER_AUDIT__CHECKPOINT_EVERY": "5"})
    yield made
    made.stop()


def test_vacuum_a_pruned_node_database(cluster: Cluster) -> None:
    """After ``tether audit prune`` (and rows deleted otherwise), with the node stopped: the
    file shrinks, ``store verify`` and ``audit verify`` pass, the node serves again."""
    absent = cluster.cli("store", "vacuum", "--data-dir", "nowhere")
    assert absent.returncode == 2 and "nowhere/tether.db: no such database" in absent.stderr
    assert not (cluster.root / "nowhere").exists()  # nothing made on the way
    node = cluster.start()
    admin = TOKEN.findall(node.stderr)[0]
    for n in range(8):
        made = cluster.cli("agent", "create", f"bot-{n}", "--owner", "a", token=admin)
        assert made.returncode == 0, made.stderr
    pruned = cluster.cli("audit", "prune", "--before", "2099-01-01", "--archive", "a.jsonl",
                         "--data-dir", "data")  # fmt: skip
    assert pruned.returncode == 0, pruned.stderr
    refused = cluster.cli("store", "vacuum", "--data-dir", "data")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"(pid {node.process.pid}: tether serve)" in refused.stderr
    assert "stop the node first" in refused.stderr
    assert node.stop() == 0

    database = cluster.root / "data" / "tether.db"
    _scratch(database, 3)
    rows, before = _rows(database), on_disk(database)
    done = cluster.cli("store", "vacuum", "--data-dir", "data")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"vacuumed {database}: ") and "MiB given back" in done.stderr
    assert before - on_disk(database) > 3 * 1000 * 1024 and _rows(database) == rows

    verified = cluster.cli("store", "verify", "--data-dir", "data")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    audit = cluster.cli("audit", "verify", "--data-dir", "data", "--json")
    assert audit.returncode == 0 and json.loads(audit.stdout)["ok"], audit.stdout
    node = cluster.start()
    again = cluster.cli("agent", "create", "bot-after", "--owner", "a", token=admin)
    assert again.returncode == 0, again.stderr
    assert node.stop() == 0
