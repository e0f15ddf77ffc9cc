"""End to end: upgrading to row seals with a real ``tether serve`` and ``tether store seal``
(migrations 0015, and 0020-0021 for signing keys and the revocation ledger).

Rows from before migration 0015 have no seal (here: a database whose seals were cleared,
which is what the migration leaves): the node names them at start and refuses them, the
admin token included; ``tether store seal --dry-run`` lists them, ``tether store seal``
seals them with the node's master key, and they work again at once. A row planted after
the adoption is refused until an operator adopts it in turn.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from tests.identity_e2e.test_e2e_serve import Cluster

from .test_e2e_cli import TOKEN, PatientCluster, ok


@pytest.fixture
def cluster(tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]) -> Cluster:
    made = PatientCluster(tmp_path, tether_bin, clean_env)
    yield made  # type: ignore[misc]
    made.stop()


def _sql(cluster: Cluster, statement: str) -> None:
    with sqlite3.connect(cluster.root / "data" / "tether.db") as db:
        db.execute(statement)


def test_rows_from_before_the_seals_work_once_adopted(cluster: Cluster) -> None:
    node = cluster.start()
    admin = TOKEN.findall(node.stderr)[0]
    add = ("target", "add", "api", "--kind", "http", "--url", "https://api.example.com",
           "--credential", "bearer:api/key")  # fmt: skip
    ok(cluster.cli(*add, token=admin))
    assert node.stop() == 0
    for table in ("targets", "admin_tokens"):
        _sql(cluster, f"UPDATE {table} SET seal = NULL")

    node = cluster.start()
    node.wait_for_log(r"1 targets row\(s\) have no seal and are refused until `tether store seal`")
    node.wait_for_log(r"1 admin_tokens row\(s\) have no seal")
    refused = cluster.cli("target", "list", token=admin)
    assert refused.returncode == 4, refused.stderr  # the admin token is refused too

    listed = cluster.cli("store", "seal", "--dry-run", "--data-dir", "data")
    admin_id = admin[4:16]
    assert ok(listed) == f"unsealed targets api\nunsealed admin_tokens {admin_id}\n"
    assert listed.stderr == "2 row(s) unsealed\n"
    sealed = cluster.cli("store", "seal", "--data-dir", "data")
    assert ok(sealed) == f"sealed targets api\nsealed admin_tokens {admin_id}\n"
    assert "api" in ok(cluster.cli("target", "show", "api", token=admin))  # no restart

    # Planted after the adoption: refused, and listed by the next dry run.
    columns = "kind, labels, spec, created_at, updated_at"
    _sql(cluster, f"INSERT INTO targets SELECT 'planted', {columns}, NULL, revision FROM targets")
    shown = cluster.cli("target", "show", "planted", token=admin)
    assert shown.returncode == 6, shown.stderr  # 409: named, never an internal error
    assert "stored target 'planted' is refused: it has no seal" in shown.stderr
    assert cluster.cli("target", "list", token=admin).returncode == 6
    assert ok(cluster.cli("store", "seal", "--dry-run", "--data-dir", "data")) == (
        "unsealed targets planted\n"
    )
    node.wait_for_log("target 'planted' refused: it has no seal: the row was changed outside")


def test_store_seal_needs_the_master_key(cluster: Cluster) -> None:
    done = cluster.cli("store", "seal", "--data-dir", "elsewhere")
    assert done.returncode == 2
    assert done.stderr.startswith("tether: error: no master key: set TETHER_MASTER_KEY")
    assert not (cluster.root / "elsewhere" / "master.key").exists()


def test_keys_and_revocations_from_before_0020_and_0021_once_adopted(cluster: Cluster) -> None:
    """A database as migrations 0020 and 0021 leave it (signing keys without a seal, no
    revocation ledger): ``tether serve`` refuses to start, naming the key and the command,
    with no traceback; ``tether store seal`` adopts the keys and rebuilds the ledger from
    the revocations present, and the node starts and honours them."""
    node = cluster.start()
    admin = TOKEN.findall(node.stderr)[0]
    ok(cluster.cli("revoke", "task", "T-old", "--reason", "done", token=admin))
    assert node.stop() == 0
    _sql(cluster, "UPDATE signing_keys SET seal = NULL")
    _sql(cluster, "DELETE FROM revocation_ledger")

    refused = cluster.refused_start()
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    assert re.search(
        r"tether: error: signing keys unusable: the active access-token key '[^']+' does not "
        r"verify: .*adopt it with `tether store seal`",
        refused.stderr,
    ), refused.stderr

    listed = ok(cluster.cli("store", "seal", "--dry-run", "--data-dir", "data")).splitlines()
    assert sum(line.startswith("unsealed signing_keys ") for line in listed) == 3
    assert "unsealed revocation_ledger missing" in listed
    sealed = ok(cluster.cli("store", "seal", "--data-dir", "data")).splitlines()
    assert sum(line.startswith("sealed signing_keys ") for line in sealed) == 3
    assert "sealed revocation_ledger revocations=1" in sealed
    assert ok(cluster.cli("store", "seal", "--dry-run", "--data-dir", "data")) == ""

    node = cluster.start()  # starts, the revocations verify, the admin token works
    ok(cluster.cli("target", "list", token=admin))
    assert "every credential is refused" not in node.stderr
