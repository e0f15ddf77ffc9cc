"""The whole path through a real ``tether serve``: users and login with the CLI, an agent
asking with the SDK, an approver deciding with ``tether approvals``."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.approvals.helpers import POLICY
from tests.test_serve import Node
from tether.client import TetherClient, TetherRefused

TOKEN = re.compile(r"tat_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}")
PASSWORD = "a long enough password"


@pytest.fixture
def node(tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]) -> Iterator[Node]:
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "approvals.yaml").write_text(POLICY)
    args = [str(tether_bin), "serve", "--policies", "pol", "--data-dir", "data",
            "--listen", "127.0.0.1:0"]  # fmt: skip
    started = Node(args, tmp_path, clean_env)
    try:  # the node is stopped even when it does not come up
        found = started.wait_for_log(r"serving on http://([\d.:]+)", 60)  # a loaded machine
        started.url = "http://" + found.group(1)
        yield started
    finally:
        if started.process.poll() is None:
            started.process.kill()
            started.process.wait()


def run(
    tether_bin: Path, env: dict[str, str], *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tether_bin), *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


def test_login_ask_list_approve_through_a_running_node(
    node: Node, tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    admin = TOKEN.findall(node.stderr)[0]
    as_admin = {**clean_env, "TETHER_ADMIN_TOKEN": admin, "TETHER_SERVER": node.url}
    for name, group in (("sam", "sre"), ("olivia", "sre")):
        added = run(tether_bin, as_admin, "user", "add", name, "--group", group, "--role",
                    "approver", "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
        assert added.returncode == 0, added.stderr
    listed = run(tether_bin, as_admin, "user", "list", "--json")
    assert {u["id"] for u in json.loads(listed.stdout)["users"]} == {"sam", "olivia"}

    auth = {"Authorization": f"Bearer {admin}"}
    httpx.post(node.url + "/v1/agents", json={"id": "bot", "owner": "olivia"}, headers=auth)
    join = httpx.post(node.url + "/v1/agents/bot/join-tokens", headers=auth).json()["join_token"]
    with TetherClient(node.url) as tether:
        session = tether.join(join, task_id="T-1", purpose="deploy")
        asked = session.request_access("web", {"ssh": {"command": "systemctl restart app"}},
                                       reason="release 42")  # fmt: skip
        assert asked["status"] == "pending" and asked["rule"] == "restart"
        with pytest.raises(TetherRefused) as refused:
            session.request_access("web", {"ssh": {"command": "reboot"}})
        assert refused.value.status == 403

        homes = {}
        for name in ("sam", "olivia"):
            home = tmp_path / f"home-{name}"
            env = {**clean_env, "XDG_CONFIG_HOME": str(home), "TETHER_SERVER": node.url}
            signed = run(tether_bin, env, "login", "--user", name, "--password-stdin",
                         stdin=PASSWORD + "\n")  # fmt: skip
            assert signed.returncode == 0, signed.stderr
            assert (home / "tether" / "login.json").stat().st_mode & 0o777 == 0o600
            homes[name] = env
        wrong = run(tether_bin, {**homes["sam"], "XDG_CONFIG_HOME": str(tmp_path / "x")}, "login",
                    "--user", "sam", "--password-stdin", stdin="not the password\n")  # fmt: skip
        assert wrong.returncode == 4 and "wrong user, password or code" in wrong.stderr

        pending = run(tether_bin, homes["sam"], "approvals", "list", "--actionable", "--json")
        assert [r["id"] for r in json.loads(pending.stdout)["access_requests"]] == [asked["id"]]
        own = run(
            tether_bin, homes["olivia"], "approvals", "approve", asked["id"], "--reason", "me"
        )
        assert own.returncode == 4 and "owner" in own.stderr and "Traceback" not in own.stderr
        done = run(tether_bin, homes["sam"], "approvals", "approve", asked["id"], "--reason", "ok")
        assert done.returncode == 0, done.stderr
        assert f"{asked['id']} is approved (1/1 approvals)" in done.stdout
        again = run(tether_bin, homes["sam"], "approvals", "deny", asked["id"], "--reason", "late")
        assert again.returncode == 6
        shown = run(tether_bin, homes["sam"], "approvals", "show", asked["id"])
        assert "systemctl restart app" in shown.stdout and "approve   sam" in shown.stdout
        assert session.access_request(asked["id"])["status"] == "approved"

        created = run(tether_bin, homes["sam"], "user", "token", "create", "--name", "ci")
        assert created.returncode == 0 and created.stdout.startswith("tpt_")
        not_admin = run(tether_bin, homes["sam"], "user", "list")
        assert not_admin.returncode == 4 and "needs role admin" in not_admin.stderr
        out = run(tether_bin, homes["sam"], "logout")
        assert out.returncode == 0
        after = run(tether_bin, homes["sam"], "approvals", "list")
        assert after.returncode == 2 and "not signed in" in after.stderr
