"""End to end: a real ``tether serve`` whose SQLite database is put back from a backup taken
before an agent (or a user) was disabled (its row then active, sealed by Tether: it
verifies). The node keeps refusing the agent after the restore because its file
(``data/revisions.json``) remembers the later row; it says so in its log; ``tether agent
enable`` refuses the row as it stands, and disabling then enabling it is the way back. The
same for a user, who cannot log in. Without the file the restored database takes the agent
(and the user) back: the controls. A file that does not parse stops the node with one line,
not a traceback."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.identity_e2e.test_e2e_serve import TOKEN, Cluster
from tether.client import TetherClient, TetherRefused

PASSWORD = "a long enough password"
OLDER = (
    "agent 'bot' refused: its row is revision 1, older than revision 2 this node saw: the "
    "database was put back to an earlier state"
)


@pytest.fixture
def cluster(tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]) -> Iterator[Cluster]:
    made = Cluster(tmp_path, tether_bin, clean_env)
    yield made
    made.stop()


def _put_back(backup: Path, data: Path) -> None:
    for name in ("tether.db", "tether.db-wal", "tether.db-shm"):
        (data / name).unlink(missing_ok=True)
    shutil.copy2(backup, data / "tether.db")


def test_a_restored_backup_does_not_enable_a_disabled_agent(cluster: Cluster) -> None:
    node, admin, join_token = cluster.start_with_join_token()
    data, backup = cluster.root / "data", cluster.root / "backup.db"
    with TetherClient(cluster.url) as tether:
        session = tether.join(join_token, task_id="T-1", purpose="e2e")
        assert session.whoami()["task"]["id"] == "T-1"
        copied = cluster.cli("store", "backup", str(backup), "--data-dir", "data")
        assert copied.returncode == 0, copied.stderr
        disabled = cluster.cli("agent", "disable", "bot", token=admin)
        assert disabled.returncode == 0, disabled.stderr
        with pytest.raises(TetherRefused, match="the agent is disabled"):
            session.whoami()
        assert node.stop() == 0
        marks = json.loads((data / "revisions.json").read_text())
        assert {"table": "agents", "key": "bot", "revision": 2} in marks["rows"]

        _put_back(backup, data)
        node = cluster.start()
        with pytest.raises(TetherRefused, match="the agent is unverified"):
            session.whoami()
        node.wait_for_log(OLDER)
        enable = cluster.cli("agent", "enable", "bot", token=admin)
        assert enable.returncode != 0
        assert "put back older than a row this node saw" in enable.stderr, enable.stderr
        assert node.stop() == 0
        checked = cluster.cli("store", "verify", "--data-dir", "data")
        assert checked.returncode == 1, checked.stderr
        assert checked.stdout == "older agents bot (revision 1, the node admitted revision 2)\n"

        # The control: the restored database alone takes the agent back.
        (data / "revisions.json").rename(cluster.root / "revisions.json.aside")
        _put_back(backup, data)
        node = cluster.start()
        assert session.whoami()["task"]["id"] == "T-1"
        assert "older than revision" not in node.stderr
        assert node.stop() == 0

        # The way back, with the file: disabled (sealed again), reviewed, enabled.
        (cluster.root / "revisions.json.aside").replace(data / "revisions.json")
        _put_back(backup, data)
        node = cluster.start()
        for change in ("disable", "enable"):
            done = cluster.cli("agent", change, "bot", token=admin)
            assert done.returncode == 0, done.stderr
        assert session.whoami()["task"]["id"] == "T-1"
        assert node.stop() == 0

    (data / "revisions.json").write_text('{"format": "tether-revisions/1", "rows": [7]}')
    cluster.refused_in_one_line(
        f"tether: error: the row revisions file does not parse: {data / 'revisions.json'}: "
        "row 0 is not an object; move it aside to start without it"
    )


def test_a_restored_backup_does_not_enable_a_disabled_user(cluster: Cluster) -> None:
    node = cluster.start()
    admin = TOKEN.findall(node.stderr)[0]
    added = cluster.cli("user", "add", "sam", "--role", "approver", "--password-stdin",
                        token=admin, stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    data, backup = cluster.root / "data", cluster.root / "backup.db"
    home = {"XDG_CONFIG_HOME": str(cluster.root / "home")}

    def login() -> subprocess.CompletedProcess[str]:
        return cluster.cli("login", "--user", "sam", "--password-stdin", stdin=PASSWORD + "\n",
                           **home)  # fmt: skip

    assert login().returncode == 0
    assert cluster.cli("store", "backup", str(backup), "--data-dir", "data").returncode == 0
    assert cluster.cli("user", "disable", "sam", token=admin).returncode == 0
    assert login().returncode == 4
    assert node.stop() == 0
    marks = json.loads((data / "revisions.json").read_text())
    assert {"table": "users", "key": "sam", "revision": 2} in marks["rows"]

    _put_back(backup, data)
    node = cluster.start()
    refused = login()
    assert refused.returncode == 4 and "wrong user, password or code" in refused.stderr
    node.wait_for_log("user 'sam' refused: its row is revision 1, older than revision 2")
    assert node.stop() == 0

    # The control: the restored database alone takes the user back.
    (data / "revisions.json").unlink()
    _put_back(backup, data)
    node = cluster.start()
    assert login().returncode == 0
    assert node.stop() == 0


def test_a_restored_backup_does_not_bring_a_rotated_out_key_back(cluster: Cluster) -> None:
    node = cluster.start()
    admin = TOKEN.findall(node.stderr)[0]
    data, backup = cluster.root / "data", cluster.root / "backup.db"
    assert cluster.cli("store", "backup", str(backup), "--data-dir", "data").returncode == 0
    rotated = cluster.cli("keys", "rotate", token=admin)  # the old key leaked, say
    assert rotated.returncode == 0, rotated.stderr
    assert node.stop() == 0
    marks = json.loads((data / "revisions.json").read_text())["rows"]
    assert [m["revision"] for m in marks if m["table"] == "signing_keys"].count(2) == 1

    _put_back(backup, data)  # the old key active again, sealed by Tether then
    stopped = cluster.refused_start()
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    logged, error = stopped.stderr.splitlines()  # why, then the one line of error
    assert "older than revision 2 this node saw" in logged
    assert error.startswith("tether: error: signing keys unusable: the active access-token key")
    assert error.endswith("or put back older than this node saw (docs/vault.md, Tampering with "
                          "the database)")  # fmt: skip

    # The control: without the file, the node starts on the old key.
    (data / "revisions.json").rename(cluster.root / "revisions.json.aside")
    node = cluster.start()
    assert node.stop() == 0

    # The way back, with the file: the old row retired; the node makes a new key.
    (cluster.root / "revisions.json.aside").replace(data / "revisions.json")
    _put_back(backup, data)
    with contextlib.closing(sqlite3.connect(data / "tether.db")) as db, db:
        db.execute("UPDATE signing_keys SET state = 'retired' WHERE purpose = 'access-token'")
    node = cluster.start()
    assert node.stop() == 0
