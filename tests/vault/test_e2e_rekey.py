"""End to end: ``tether store rekey`` on a real node's data directory. The node stopped, the
command moves everything under the master key to a new one and puts the new key file in
place; the node starts again with the admin token, the agent's token, the vault secret, the
target and the audit trail all as before, and the old key no longer starts it. With the key
in ``TETHER_MASTER_KEY`` the new one goes to a file the operator names."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.identity_e2e.test_e2e_serve import Cluster
from tether.client import TetherClient

from .test_e2e_cli import TOKEN, PatientCluster, cli_in, ok


@pytest.fixture
def cluster(tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]) -> Iterator[Cluster]:
    made = PatientCluster(tmp_path, tether_bin, clean_env)
    yield made
    made.stop()


def _lines(done: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """``moved TABLE N`` lines as {table: N}."""
    found = {}
    for line in ok(done).splitlines():
        verb, table, count = line.split(" ", 2)
        if verb == "moved":
            found[table] = int(count)
    return found


def test_the_master_key_is_rotated_and_everything_works_under_the_new_one(
    cluster: Cluster,
) -> None:
    node = cluster.start()
    admin = TOKEN.findall(node.stderr)[0]
    ok(cluster.cli("agent", "create", "bot", "--owner", "a", token=admin))
    ok(cli_in(cluster, admin, "s3cret\n", "secret", "set", "api/key"))
    ok(cluster.cli("target", "add", "api", "--kind", "http", "--url", "https://api.example.com",
                   "--credential", "bearer:api/key", token=admin))  # fmt: skip
    ok(cluster.cli("revoke", "task", "T-old", "--reason", "done", token=admin))
    join = ok(cluster.cli("agent", "join-token", "bot", token=admin)).strip()
    key_file = cluster.root / "data" / "master.key"
    old_key = key_file.read_text()
    with TetherClient(cluster.url) as tether:
        session = tether.join(join, task_id="T-1", purpose="e2e")
        assert node.stop() == 0

        done = cluster.cli("store", "rekey", "--data-dir", "data")
        moved = _lines(done)
        for table in ("signing_keys", "vault_secrets", "targets", "admin_tokens", "agents",
                      "revocation_ledger"):  # fmt: skip
            assert moved.get(table, 0) >= 1, (table, done.stdout)
        assert done.stderr == f"the master key in {key_file} is replaced: start the nodes\n"
        assert key_file.read_text() != old_key
        assert not (cluster.root / "data" / "master.key.new").exists()

        node = cluster.start()
        assert "api" in ok(cluster.cli("target", "show", "api", token=admin))
        assert "api/key" in ok(cluster.cli("secret", "list", token=admin))
        assert session.whoami()["task"]["id"] == "T-1"  # the same signing keys
        assert "every credential is refused" not in node.stderr
        assert "have no seal" not in node.stderr
        assert node.stop() == 0

    verify = cluster.cli("audit", "verify", "--data-dir", "data", "--json")
    report = json.loads(ok(verify))
    assert report["ok"] and report["keys_authenticated"], report

    key_file.write_text(old_key)  # the old key starts nothing any more
    refused = cluster.refused_start()
    assert refused.returncode == 2, refused.stderr
    assert "signing keys unusable" in refused.stderr and "another master key" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_with_the_key_in_the_environment_the_new_one_goes_to_a_named_file(
    cluster: Cluster,
) -> None:
    current = "A" * 43
    cluster.env = {**cluster.env, "TETHER_MASTER_KEY": current}
    node = cluster.start()
    admin = TOKEN.findall(node.stderr)[0]
    ok(cli_in(cluster, admin, "s3cret\n", "secret", "set", "api/key"))
    assert node.stop() == 0

    refused = cluster.cli("store", "rekey", "--data-dir", "data")
    assert refused.returncode == 2
    assert refused.stderr == (
        "tether: error: the master key comes from TETHER_MASTER_KEY: name a file for the new "
        "one with --new-key-file\n"
    )
    done = cluster.cli("store", "rekey", "--data-dir", "data", "--new-key-file", "next.key")
    assert _lines(done)["vault_secrets"] == 1
    assert "the database is under the new master key in next.key" in done.stderr
    new_key = (cluster.root / "next.key").read_text().strip()
    assert (cluster.root / "next.key").stat().st_mode & 0o077 == 0

    same = cluster.cli("store", "rekey", "--data-dir", "data", "--new-key-file", "next.key")
    assert "moved" not in ok(same) and "already vault_secrets 1" in same.stdout  # resumable

    cluster.env = {**cluster.env, "TETHER_MASTER_KEY": new_key}
    node = cluster.start()
    assert "api/key" in ok(cluster.cli("secret", "list", token=admin))
    assert node.stop() == 0
