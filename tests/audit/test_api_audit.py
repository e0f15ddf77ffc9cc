"""The audit trail through a real ``tether serve``: the admin API, and the CLI with --server.

A second writer (this test, like a second node) appends to the node's database while the
node's own writer runs; the API serves both, and the node checkpoints the trail when it
stops.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.audit.conftest import sample, store_signing_key
from tests.test_serve import Node
from tether.audit.log import AuditLog
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import load_master_key
from tether.identity.keys import SigningKey
from tether.store import Store

TOKEN = re.compile(r"tat_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}")


@pytest.fixture
def node(tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]) -> Iterator[Node]:
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "a.yaml").write_text(
        "rules:\n  - id: r\n    effect: allow\n    mcp: {tools: [x]}\n"
    )
    args = [str(tether_bin), "serve", "--policies", "pol", "--data-dir", "data",
            "--listen", "127.0.0.1:0"]  # fmt: skip
    started = Node(args, tmp_path, {**clean_env, "TETHER_AUDIT__CHECKPOINT_EVERY": "1000"})
    started.url = "http://" + started.wait_for_log(r"serving on http://([\d.:]+)").group(1)
    try:
        yield started
    finally:
        if started.process.poll() is None:
            started.process.kill()
            started.process.wait()


def cli(tether_bin: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tether_bin), "audit", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def test_search_tail_and_verify_through_a_running_node(
    node: Node, tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    admin = TOKEN.findall(node.stderr)[0]
    env = {**clean_env, "TETHER_ADMIN_TOKEN": admin}
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'tether.db'}")
    key = SigningKey.generate(time.time())
    # Sealed by the node's master key, as its keystore does: verify trusts no other key.
    cipher = EnvelopeCipher(load_master_key(tmp_path / "data"))
    await store_signing_key(store.engine, key, state="previous", cipher=cipher)
    writer = AuditLog(store.engine, lambda: key, checkpoint_every=5)
    await writer.start()
    try:
        for i in range(12):
            await writer.append(sample(i))

        async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
            anonymous = await http.get("/v1/audit/events")
            assert anonymous.status_code == 401
            auth = {"Authorization": f"Bearer {admin}"}
            page = (await http.get("/v1/audit/events?agent=agent-1&limit=2", headers=auth)).json()
            assert [e["seq"] for e in page["events"]] == [8, 11] and page["last_seq"] == 11
            bad = await http.get("/v1/audit/events?kind=login", headers=auth)
            assert bad.status_code == 400 and "unknown kind" in bad.json()["detail"]
            bad = await http.get("/v1/audit/events?since=soon", headers=auth)
            assert bad.status_code == 400 and bad.json()["detail"].startswith("since:")
            started = time.monotonic()
            empty = await http.get(
                "/v1/audit/events?after_seq=12&wait=0.5&kind=ssh.command", headers=auth
            )
            assert empty.json()["events"] == [] and empty.json()["last_seq"] >= 12
            assert time.monotonic() - started >= 0.5  # it waited for new events
            # The node audited each of these admin calls in the same trail.
            admin = (await http.get("/v1/audit/events?kind=admin.change", headers=auth)).json()
            calls = [(e["user"].split(":")[0], e["action"], e["source_ip"])
                     for e in admin["events"]]  # fmt: skip
            assert calls[0] == ("anonymous", {"name": "audit.search", "outcome": "denied"},
                                "127.0.0.1")  # fmt: skip
            assert calls[1] == ("admin-token", {"name": "audit.search", "outcome": "success"},
                                "127.0.0.1")  # fmt: skip
            assert ("admin-token", {"name": "audit.search", "outcome": "refused"},
                    "127.0.0.1") in calls  # fmt: skip

        found = cli(tether_bin, env, "search", "--server", node.url, "--task", "T-3", "--json")
        assert found.returncode == 0, found.stderr
        assert [json.loads(line)["seq"] for line in found.stdout.splitlines()] == [4, 9]

        follower = subprocess.Popen(
            [str(tether_bin), "audit", "tail", "-f", "-n", "1", "--json", "--server", node.url,
             "--kind", "decision"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert follower.stdout is not None
            assert json.loads(follower.stdout.readline())["seq"] == 12  # sample(11): decision
            appended = [await writer.append(sample(i)) for i in range(12, 20)]
            decisions = [e.seq for e in appended if e.kind == "decision"]
            assert [json.loads(follower.stdout.readline())["seq"] for _ in range(2)] == decisions
        finally:
            follower.terminate()
            follower.wait(timeout=10)

        verified = cli(tether_bin, env, "verify", "--server", node.url, "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        report = json.loads(verified.stdout)
        assert report["ok"] is True
        assert report["events"] == report["last_seq"] > 20  # ours and the node's admin events
        refused = cli(tether_bin, {**env, "TETHER_ADMIN_TOKEN": "tat_000000000000." + "x" * 43},
                      "verify", "--server", node.url)  # fmt: skip
        assert refused.returncode == 4
    finally:
        await writer.close()
        await store.close()

    assert node.stop() == 0
    offline = cli(tether_bin, env, "verify", "--data-dir", str(tmp_path / "data"), "--json")
    report = json.loads(offline.stdout)
    assert (offline.returncode, report["ok"], report["unanchored"]) == (0, True, 0)
    # The test writer's close checkpointed the head, the node's admin events included;
    # the node had nothing left to checkpoint when it stopped.
    assert len(report["keys"]) == 1
