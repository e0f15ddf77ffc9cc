"""End to end: a real ``tether serve`` whose SQLite database is put back from a backup taken
before a revocation (every file of it: the older list and its ledger verify). The node keeps
refusing the revoked task's token after the restore because its copy
(``data/revocations.json``) still holds the revocation; it says so in its log and in
``GET /healthz``. Without the copy the restored database takes the token back (the control),
and a copy that does not parse stops the node with one line, not a traceback."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.identity_e2e.test_e2e_serve import Cluster
from tether.client import TetherClient, TetherRefused


@pytest.fixture
def cluster(tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]) -> Iterator[Cluster]:
    made = Cluster(tmp_path, tether_bin, clean_env)
    yield made
    made.stop()


def _database_files(data: Path) -> list[Path]:
    """The database's own files (not the audit head file, nor the node's lock)."""
    names = ("tether.db", "tether.db-wal", "tether.db-shm")
    return [data / name for name in names if (data / name).exists()]


def _put_back(backup: Path, data: Path) -> None:
    for path in _database_files(data):
        path.unlink()
    for path in backup.iterdir():
        shutil.copy2(path, data / path.name)


def test_a_restored_backup_does_not_bring_a_revoked_task_back(cluster: Cluster) -> None:
    node, admin, join_token = cluster.start_with_join_token()
    data, backup = cluster.root / "data", cluster.root / "backup"
    with TetherClient(cluster.url) as tether:
        session = tether.join(join_token, task_id="T-1", purpose="e2e")
        assert session.whoami()["task"]["id"] == "T-1"
        backup.mkdir()
        # The backup, taken while the node runs, as docs/operations.md says.
        copied = cluster.cli("store", "backup", "backup/tether.db", "--data-dir", "data")
        assert copied.returncode == 0, copied.stderr
        assert copied.stderr.startswith(f"backed up {data / 'tether.db'} to backup/tether.db (")
        revoked = cluster.cli("revoke", "task", "T-1", "--reason", "stolen", token=admin)
        assert revoked.returncode == 0, revoked.stderr
        with pytest.raises(TetherRefused) as refused:
            session.whoami()
        assert refused.value.status == 401
        assert node.stop() == 0
        copy = json.loads((data / "revocations.json").read_text())
        assert {"kind": "task", "value": "T-1", "expires_at": None} in copy["revocations"]

        _put_back(backup, data)
        node = cluster.start()
        node.wait_for_log(
            r"1 revocation\(s\) this node holds, still in force, are missing from the "
            r"database \(the first: task 'T-1'\); they are still honoured here"
        )
        with pytest.raises(TetherRefused) as refused:
            session.whoami()
        assert "the task is revoked" in str(refused.value)
        health = httpx.get(f"{cluster.url}/healthz").json()
        assert (health["status"], health["revocations_missing"]) == ("ok", 1)
        assert node.stop() == 0

        # The control: the restored database alone has forgotten the revocation.
        (data / "revocations.json").rename(cluster.root / "revocations.json.aside")
        _put_back(backup, data)
        node = cluster.start()
        assert session.whoami()["task"]["id"] == "T-1"
        assert "missing from the database" not in node.stderr
        assert node.stop() == 0

    (data / "revocations.json").write_text('{"format": "tether-revocations/1", "revocations": [')
    cluster.refused_in_one_line(
        f"tether: error: the revocation copy does not parse: {data / 'revocations.json'}: not "
        "a JSON document; move it aside to start without it"
    )


def test_a_restored_backup_does_not_make_a_used_join_token_new(cluster: Cluster) -> None:
    node, _admin, join_token = cluster.start_with_join_token()
    data, backup = cluster.root / "data", cluster.root / "backup"
    backup.mkdir()
    copied = cluster.cli("store", "backup", "backup/tether.db", "--data-dir", "data")
    assert copied.returncode == 0, copied.stderr  # taken before the token was used
    with TetherClient(cluster.url) as tether:
        assert tether.join(join_token, task_id="T-1", purpose="e2e").whoami()
        with pytest.raises(TetherRefused) as refused:
            tether.join(join_token, task_id="T-2", purpose="e2e")
        assert refused.value.status == 400
        assert node.stop() == 0

        _put_back(backup, data)  # the token's row unused again, its use gone from the list
        node = cluster.start()
        node.wait_for_log(r"1 revocation\(s\) this node holds, still in force, are missing")
        with pytest.raises(TetherRefused) as refused:
            tether.join(join_token, task_id="T-3", purpose="e2e")
        assert (refused.value.status, refused.value.error) == (400, "invalid_grant")
        node.wait_for_log(r"join token '[0-9a-f]+' refused: it was used, but its row is unused")
        assert node.stop() == 0

        # The control: without the node's copy, the restored database takes the token again.
        (data / "revocations.json").rename(cluster.root / "revocations.json.aside")
        _put_back(backup, data)
        node = cluster.start()
        assert tether.join(join_token, task_id="T-4", purpose="e2e").whoami()
        assert node.stop() == 0
