"""End to end: a real ``tether serve``, the ``tether`` CLI, the SDK, ``ssh-keygen``.

One story, in order, because each step depends on the last: first start prints the admin
token once; the CLI creates an agent and a join token; the SDK joins, renews, gets an SSH
certificate that OpenSSH reads back; keys rotate without breaking live tokens; a task
revoked with the CLI is refused at once; a restart keeps keys and revocations and prints no
token; ``tether admin-token create`` works on the database alone.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import httpx
import pytest

from tests.test_serve import Node
from tether.client import TetherClient, TetherRefused

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
POLICY = (
    "rules:\n  - id: r\n    effect: allow\n    agents: [bot]\n    targets: [t]\n"
    "    mcp: {tools: [x]}\n"
)
TOKEN = re.compile(r"tat_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}")


class Cluster:
    """Starts nodes on one data directory and runs the CLI against the running one."""

    def __init__(self, root: Path, tether: Path, env: dict[str, str]) -> None:
        self.root, self.tether, self.env = root, tether, env
        self.nodes: list[Node] = []
        self.port = closed_port()  # every start listens here: the issuer URL stays the same
        self.url = f"http://127.0.0.1:{self.port}"
        (root / "pol").mkdir()
        (root / "pol" / "a.yaml").write_text(POLICY)

    def serve_args(self) -> list[str]:
        return [str(self.tether), "serve", "--policies", "pol", "--data-dir", "data",
                "--listen", f"127.0.0.1:{self.port}"]  # fmt: skip

    def start(self) -> Node:
        node = Node(self.serve_args(), self.root, self.env)
        self.nodes.append(node)
        node.wait_for_log("tether serving on")
        return node

    def start_with_join_token(self, agent: str = "bot") -> tuple[Node, str, str]:
        """A node started, ``agent`` created on it and a join token made for it: the node,
        the initial admin token, the join token."""
        node = self.start()
        admin = TOKEN.findall(node.stderr)[0]
        made = self.cli("agent", "create", agent, "--owner", "a", token=admin)
        assert made.returncode == 0, made.stderr
        join = self.cli("agent", "join-token", agent, token=admin)
        assert join.returncode == 0, join.stderr
        return node, admin, join.stdout.strip()

    def refused_start(self) -> subprocess.CompletedProcess[str]:
        """``tether serve`` expected to stop before serving (exit 2, say): its output."""
        return subprocess.run(self.serve_args(), cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=90)  # fmt: skip

    def refused_in_one_line(self, starting: str) -> None:
        """``tether serve`` stops before serving with exit 2 and one line of error that
        starts with ``starting``, never a traceback."""
        stopped = self.refused_start()
        assert stopped.returncode == 2, stopped.stderr
        assert "Traceback" not in stopped.stderr
        assert stopped.stderr.startswith(starting), stopped.stderr
        assert stopped.stderr.count("\n") == 1

    def cli(
        self, *args: str, token: str | None = None, stdin: str = "", **env: str
    ) -> subprocess.CompletedProcess[str]:
        variables = {**self.env, "TETHER_SERVER": self.url, **env}
        if token is not None:
            variables["TETHER_ADMIN_TOKEN"] = token
        return subprocess.run(
            [str(self.tether), *args],
            cwd=self.root,
            env=variables,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self) -> None:
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.kill()
                node.process.wait()


@pytest.fixture
def cluster(tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]) -> Cluster:
    made = Cluster(tmp_path, tether_bin, clean_env)
    yield made  # type: ignore[misc]
    made.stop()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_error_line(done: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("tether: error: ")
    assert text in done.stderr
    assert "Traceback" not in done.stderr


def test_identity_end_to_end(cluster: Cluster, tmp_path: Path) -> None:
    first = cluster.start()
    tokens = TOKEN.findall(first.stderr)
    assert len(tokens) == 1, first.stderr
    admin = tokens[0]

    # The CLI, and each refusal as one line with its own exit code.
    created = cluster.cli(
        "agent",
        "create",
        "bot",
        "--owner",
        "alice",
        "--purpose",
        "e2e",
        "--label",
        "team=ops",
        token=admin,
    )
    assert created.returncode == 0, created.stderr
    one_error_line(
        cluster.cli("agent", "create", "bot", "--owner", "a", token=admin), 6, "already exists"
    )
    one_error_line(cluster.cli("agent", "show", "nope", token=admin), 5, "no agent 'nope'")
    one_error_line(
        cluster.cli("agent", "list", token="tat_000000000000.x" + "y" * 42),
        4,
        "refused the admin token",
    )
    one_error_line(
        cluster.cli("agent", "list", "--server", f"http://127.0.0.1:{closed_port()}", token=admin),
        3,
        "cannot reach the Tether server",
    )
    one_error_line(cluster.cli("agent", "list"), 2, "no admin token")
    listed = cluster.cli("agent", "list", token=admin)
    assert re.search(r"bot\s+.*alice\s+.*active\s+.*e2e\s+.*team=ops", listed.stdout)

    minted = cluster.cli(
        "agent", "join-token", "bot", "--ttl", "300", "--label", "env=ci", token=admin
    )
    assert minted.returncode == 0, minted.stderr
    join_token = minted.stdout.strip()
    assert join_token.startswith("tjt_") and "\n" not in join_token

    with TetherClient(cluster.url) as tether:
        session = tether.join(join_token, task_id="T-1", purpose="e2e", scope=["db-*", "crm"])
        me = session.whoami()
        assert (me["sub"], me["task"]["id"], me["scope"]) == ("bot", "T-1", ["db-*", "crm"])
        assert me["runtime"]["labels"] == {"env": "ci", "platform": "join-token"}
        with pytest.raises(TetherRefused) as replayed:
            tether.join(join_token, task_id="T-9", purpose="replay")
        assert (replayed.value.status, replayed.value.error) == (400, "invalid_grant")

        # An SSH certificate that OpenSSH itself reads back.
        key = asyncssh.generate_private_key("ssh-ed25519")
        cert_file = tmp_path / "id-cert.pub"
        cert_file.write_text(session.ssh_certificate(key.export_public_key().decode(), ["deploy"]))
        shown = subprocess.run(
            ["ssh-keygen", "-L", "-f", str(cert_file)], capture_output=True, text=True, check=True
        ).stdout
        assert f'Key ID: "agent=bot task=T-1 jti={me["jti"]}"' in shown
        assert re.search(r"Principals:\s+deploy", shown)
        assert "source-address 127.0.0.1/32" in shown
        assert "permit-port-forwarding" not in shown and "permit-pty" in shown

        # Another task, narrower; a scope wider than held is refused.
        upload = session.for_task("T-2", "upload", scope=["db-reports"])
        with pytest.raises(TetherRefused) as wider:
            session.for_task("T-3", "too much", scope=["prod-*"])
        assert wider.value.error == "invalid_scope"

        # Key rotation: live tokens keep working, new ones are signed by the new key.
        rotated = cluster.cli("keys", "rotate", token=admin)
        assert rotated.returncode == 0, rotated.stderr
        assert session.whoami()["jti"] == me["jti"]
        assert len(httpx.get(cluster.url + "/.well-known/jwks.json").json()["keys"]) == 2
        renewed_kid = session.for_task("T-1b", "after rotation").token.split(".")[0]
        assert renewed_kid != session.token.split(".")[0]

        # Revoking the task with the CLI: the next request is refused, with the reason.
        revoked = cluster.cli("revoke", "task", "T-1", "--reason", "incident 42", token=admin)
        assert (revoked.returncode, revoked.stdout.strip()) == (0, "task T-1 revoked")
        with pytest.raises(TetherRefused) as refused:
            session.whoami()
        assert (refused.value.status, refused.value.detail) == (401, "the task is revoked")
        assert upload.whoami()["task"]["id"] == "T-2"  # another task is unaffected

        # Renewal: a 5-second token is renewed by the SDK before it runs out.
        second = cluster.cli("agent", "join-token", "bot", token=admin).stdout.strip()
        short = tether.join(second, task_id="T-5", purpose="short", lifetime=5)
        before = short.claims
        time.sleep(max(0.0, before["exp"] - time.time() - 0.9))
        assert short.whoami()["jti"] != before["jti"]
        assert short.claims["exp"] > before["exp"]

        # The audit-ready records of the admin calls are in the node's log.
        assert "admin revoke on task:T-1 by admin-token:" in first.stderr
        assert first.stop() == 0

        # A restart: same keys, revocations kept, and no admin token printed again.
        second_node = cluster.start()
        assert "tat_" not in second_node.stderr and "admin token" not in second_node.stderr
        assert upload.whoami()["task"]["id"] == "T-2"
        with pytest.raises(TetherRefused, match="the task is revoked"):
            session.whoami()

    # Recovery: a new admin token made offline, on the database, works against the server.
    made = cluster.cli("admin-token", "create", "--data-dir", "data", "--name", "recovery")
    assert made.returncode == 0, made.stderr
    recovered = made.stdout.strip()
    assert TOKEN.fullmatch(recovered) and recovered != admin
    shown_bot = cluster.cli("agent", "show", "bot", "--json", token=recovered)
    assert '"state": "active"' in shown_bot.stdout

    # The first token leaked: revoked offline, it is refused at its next request, the
    # recovery token works on; list shows both, never a secret.
    first_id = admin.removeprefix("tat_").partition(".")[0]
    database = cluster.root / "data" / "tether.db"
    with contextlib.closing(sqlite3.connect(database)) as db:
        live = db.execute("SELECT revoked_at, seal FROM admin_tokens WHERE id = ?", (first_id,))
        before = live.fetchone()
    revoked = cluster.cli("admin-token", "revoke", first_id, "--data-dir", "data")
    assert (revoked.returncode, revoked.stderr) == (0, f"admin token {first_id} revoked\n")
    refused = cluster.cli("agent", "show", "bot", "--json", token=admin)
    assert refused.returncode == 4 and "unknown, expired or revoked" in refused.stderr
    again = cluster.cli("admin-token", "revoke", first_id, "--data-dir", "data")
    assert again.returncode == 1 and "revoked already" in again.stderr
    assert cluster.cli("admin-token", "revoke", "nope", "--data-dir", "data").returncode == 1
    # Its row put back live: the node polled the revocation list, which holds it too.
    time.sleep(2.5)  # two polls (identity.revocation_poll: 1 s)
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute("UPDATE admin_tokens SET revoked_at = ?, seal = ? WHERE id = ?",
                   (*before, first_id))  # fmt: skip
    refused = cluster.cli("agent", "show", "bot", "--json", token=admin)
    assert refused.returncode == 4 and "unknown, expired or revoked" in refused.stderr
    second_node.wait_for_log(
        f"admin token '{first_id}' refused: it is revoked, but its row is live"
    )
    assert cluster.cli("agent", "show", "bot", "--json", token=recovered).returncode == 0
    listed = cluster.cli("admin-token", "list", "--json", "--data-dir", "data")
    assert listed.returncode == 0, listed.stderr
    states = {t["name"]: t["state"] for t in json.loads(listed.stdout)["admin_tokens"]}
    assert states == {"initial": "revoked", "recovery": "live"}  # by the revocation list too
    table = cluster.cli("admin-token", "list", "--data-dir", "data")
    assert first_id in table.stdout and "recovery" in table.stdout
    assert admin.partition(".")[2] not in listed.stdout + table.stdout  # no secret shown
    assert second_node.stop() == 0


def test_the_sdk_example_runs(cluster: Cluster) -> None:
    node = cluster.start()
    admin = TOKEN.findall(node.stderr)[0]
    assert (
        cluster.cli("agent", "create", "report-bot", "--owner", "alice", token=admin).returncode
        == 0
    )
    join_token = cluster.cli("agent", "join-token", "report-bot", token=admin).stdout.strip()
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "agent_sdk.py"), join_token],
        env={**cluster.env, "TETHER_SERVER": cluster.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "joined as report-bot for task report-2026-11" in done.stdout
    assert "SSH certificate: ssh-ed25519-cert-v01@openssh.com" in done.stdout
    assert "second task upload-2026-11 with scope ['reports-*']" in done.stdout
    again = subprocess.run(
        [sys.executable, str(EXAMPLES / "agent_sdk.py"), join_token],
        env={**cluster.env, "TETHER_SERVER": cluster.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1
    assert again.stderr.startswith("agent_sdk: 400 invalid_grant:")
