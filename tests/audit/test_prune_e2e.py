"""End to end: ``tether audit prune`` on the database of a running ``tether serve`` (SQLite),
the node appending before, during and after; ``tether audit verify`` of the trail and of the
archives; the node restarted on the pruned trail; refusals in one line."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audit.conftest import MASTER_KEY, open_trail
from tests.identity_e2e.test_e2e_serve import TOKEN, Cluster, one_error_line


@pytest.fixture
def cluster(tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]) -> Iterator[Cluster]:
    made = Cluster(tmp_path, tether_bin, {**clean_env, "TETHER_AUDIT__CHECKPOINT_EVERY": "5"})
    yield made
    made.stop()


def _events(cluster: Cluster, admin: str, count: int, prefix: str) -> None:
    """``count`` audited admin calls (each an audit event)."""
    for n in range(count):
        made = cluster.cli("agent", "create", f"{prefix}-{n}", "--owner", "a", token=admin)
        assert made.returncode == 0, made.stderr


def _verify(cluster: Cluster, *args: str) -> dict[str, object]:
    done = cluster.cli("audit", "verify", "--data-dir", "data", "--json", *args)
    report: dict[str, object] = json.loads(done.stdout)
    assert done.returncode == (0 if report["ok"] else 1), done.stderr
    return report


def test_prune_a_running_node_and_verify_the_trail_and_the_archives(cluster: Cluster) -> None:
    node = cluster.start()
    admin = TOKEN.findall(node.stderr)[0]
    _events(cluster, admin, 12, "early")
    before = _verify(cluster)
    assert before["ok"] and before["pruned_through"] is None
    through = int(str(before["last_checkpoint_seq"]))
    assert 5 <= through < int(str(before["last_seq"]))

    dry = cluster.cli("audit", "prune", "--through", str(through), "--archive", "a1.jsonl",
                      "--data-dir", "data", "--dry-run")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"would prune events 1 to {through} ({through} events) into ")
    assert not (cluster.root / "a1.jsonl").exists()
    pruned = cluster.cli("audit", "prune", "--through", str(through), "--archive", "a1.jsonl",
                         "--data-dir", "data")  # fmt: skip
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith(f"pruned events 1 to {through} ({through} events) into ")
    assert "archiving events" in pruned.stderr

    after = _verify(cluster)
    assert after["ok"], after["findings"]
    assert (after["pruned_through"], after["first_seq"]) == (through, through + 1)
    archive = _verify(cluster, "--archive", "a1.jsonl")
    assert archive["ok"], archive["findings"]
    assert (archive["events"], archive["marker"]) == (through, through)
    text = cluster.cli("audit", "verify", "--data-dir", "data")
    assert f"pruned through event {through} (1 signed prune marker(s))" in text.stdout

    # The node goes on appending, and after a restart on the pruned trail too.
    _events(cluster, admin, 6, "later")
    assert node.stop() == 0
    node = cluster.start()
    _events(cluster, admin, 6, "restarted")
    assert _verify(cluster)["ok"]

    second = cluster.cli("audit", "prune", "--before", "2099-01-01", "--archive", "a2.jsonl",
                         "--data-dir", "data", "--json")  # fmt: skip
    assert second.returncode == 0, second.stderr
    done = json.loads(second.stdout)
    assert (done["first"], done["resumed"]) == (through + 1, False)
    report = _verify(cluster)
    assert report["ok"] and (report["prunes"], report["pruned_through"]) == (2, done["through"])
    assert _verify(cluster, "--archive", "a2.jsonl")["ok"]
    assert _verify(cluster, "--archive", "a1.jsonl")["ok"]  # the first still verifies

    # A changed archive is refused; an archive of another trail is named by no marker.
    lines = (cluster.root / "a2.jsonl").read_text().splitlines(keepends=True)
    (cluster.root / "bad.jsonl").write_text("".join([lines[0], *lines[2:]]))
    bad = _verify(cluster, "--archive", "bad.jsonl")
    assert not bad["ok"] and bad["marker"] is None
    assert node.stop() == 0


def test_prune_refusals_are_one_line(cluster: Cluster) -> None:
    node = cluster.start()
    admin = TOKEN.findall(node.stderr)[0]
    _events(cluster, admin, 7, "a")
    where = ("--archive", "x.jsonl", "--data-dir", "data")
    one_error_line(cluster.cli("audit", "prune", *where), 2,
                   "give exactly one of --through SEQ and --before TIME")  # fmt: skip
    one_error_line(cluster.cli("audit", "prune", "--through", "3", *where), 1,
                   "nothing pruned: event 3 has no signed checkpoint")  # fmt: skip
    one_error_line(cluster.cli("audit", "prune", "--before", "2000-01-01", *where), 1,
                   "no checkpoint was made before 2000-01-01")  # fmt: skip
    one_error_line(cluster.cli("audit", "prune", "--before", "soon", *where), 2, "--before:")
    (cluster.root / "x.jsonl").write_text("keep me\n")
    one_error_line(cluster.cli("audit", "prune", "--through", "5", *where), 1,
                   "x.jsonl exists: an archive is never overwritten")  # fmt: skip
    assert (cluster.root / "x.jsonl").read_text() == "keep me\n"
    (cluster.root / "data" / "master.key").rename(cluster.root / "master.key.aside")
    one_error_line(cluster.cli("audit", "prune", "--through", "5", "--archive", "y.jsonl",
                               "--data-dir", "data"), 2, "no master key")  # fmt: skip
    assert not (cluster.root / "y.jsonl").exists()
    assert node.stop() == 0


async def test_prune_on_postgresql_through_a_config_file(
    pg_fresh_url: str, tether_bin: Path, clean_env: dict[str, str], tmp_path: Path
) -> None:
    trail = await open_trail(pg_fresh_url)
    env = {**clean_env, "TETHER_MASTER_KEY": MASTER_KEY.material.hex()}
    config = tmp_path / "tether.yaml"
    config.write_text(f"database_url: {pg_fresh_url}\ndata_dir: {tmp_path / 'data'}\n")

    def tether(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(tether_bin), "audit", *args, "--config", str(config)],
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip

    try:
        await trail.append(25)
        done = tether("prune", "--through", "20", "--archive", str(tmp_path / "a.jsonl"))
        assert done.returncode == 0, done.stderr
        assert "pruned events 1 to 20 (20 events)" in done.stdout
        await trail.append(3, start=25)  # the node's writer goes on
        report = json.loads(tether("verify", "--json").stdout)
        assert report["ok"] and (report["pruned_through"], report["events"]) == (20, 8)
        archive = tether("verify", "--archive", str(tmp_path / "a.jsonl"))
        assert archive.returncode == 0, archive.stdout
        assert "named by prune marker 20 of this trail" in archive.stdout
    finally:
        await trail.log.close()
        await trail.store.close()
