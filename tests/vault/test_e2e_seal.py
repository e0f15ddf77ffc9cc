"""End to end: upgrading to row seals with a real ``tether serve`` and ``tether store seal``.

Rows from before migration 0015 have no seal (here: a database whose seals were cleared,
which is what the migration leaves): the node names them at start and refuses them, the
admin token included; ``tether store seal --dry-run`` lists them, ``tether store seal``
seals them with the node's master key, and they work again at once. A row planted after
the adoption is refused until an operator adopts it in turn.
"""

from __future__ import annotations

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
    _sql(cluster, f"INSERT INTO targets SELECT 'planted', {columns}, NULL FROM targets")
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
