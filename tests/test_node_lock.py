"""One process serves a SQLite database (tether.store.nodelock): a second ``tether serve`` on
the same database stops with one line naming the running one (it would accept every DPoP
proof the first accepted, once more), ``tether store rekey`` refuses to run under a serving
node, and the lock goes with the process that held it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.identity_e2e.test_e2e_serve import Cluster, closed_port
from tether.store.nodelock import NodeLocked, lock_database


def test_the_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'tether.db'}"
    held = lock_database(url, "tether serve")
    assert held is not None
    assert held.path.read_text() == f"pid {os.getpid()}: tether serve\n"
    with pytest.raises(NodeLocked, match=rf"in use \(pid {os.getpid()}: tether serve\)"):
        lock_database(url, "tether store rekey")
    held.release()
    again = lock_database(url, "tether store rekey")
    assert again is not None and again.path.read_text().endswith(": tether store rekey\n")
    again.release()
    assert lock_database("postgresql+asyncpg://tether@db/tether", "x") is None  # many nodes
    assert lock_database("sqlite+aiosqlite:///:memory:", "x") is None


@pytest.fixture
def cluster(tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]) -> Iterator[Cluster]:
    made = Cluster(tmp_path, tether_bin, clean_env)
    yield made
    made.stop()


def test_a_second_node_and_a_rekey_are_refused_while_a_node_serves(cluster: Cluster) -> None:
    node = cluster.start()
    serving = node.process.pid
    second = cluster.cli("serve", "--policies", "pol", "--data-dir", "data",
                         "--listen", f"127.0.0.1:{closed_port()}")  # fmt: skip
    assert second.returncode == 2, second.stderr
    assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    assert f"is in use (pid {serving}: tether serve); a SQLite database is served by one " \
        "process only" in second.stderr  # fmt: skip
    rekey = cluster.cli("store", "rekey", "--data-dir", "data")
    assert rekey.returncode == 2
    assert (
        f"(pid {serving}: tether serve)" in rekey.stderr and "stop the node first" in rekey.stderr
    )
    assert not (cluster.root / "data" / "master.key.new").exists()  # refused before any change
    node.process.kill()  # however it ends, the lock goes with it
    node.process.wait()
    assert cluster.start().stop() == 0
