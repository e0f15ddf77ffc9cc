"""The README's broker walkthrough, run as written against ``tether serve`` on the example
config (copied, with free ports in place of 8765, 8766 and the other listeners)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

from tests.test_serve import Node

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- tests/proxy_http/test_walkthrough.py runs this block -->"
LISTEN = re.compile(r"127\.0\.0\.1:(\d{2,5})")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(MARKER) :].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if not line.startswith("export TETHER_ADMIN")]
    return "\n".join(lines)


def test_readme_walkthrough(tmp_path: Path, clean_env: dict[str, str]) -> None:
    ports = {
        port: str(_free_port())
        for port in set(LISTEN.findall((ROOT / "examples" / "tether.yaml").read_text()))
    }

    def moved(text: str) -> str:
        return LISTEN.sub(lambda m: f"127.0.0.1:{ports.get(m.group(1), m.group(1))}", text)

    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for name in ("tether.yaml", "billing-api.yaml"):
        path = tmp_path / "examples" / name
        path.write_text(moved(path.read_text()))
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    server = f"http://127.0.0.1:{ports['8765']}"
    env = {**clean_env, "TETHER_SERVER": server}
    node = Node([".venv/bin/tether", "serve", "--config", "examples/tether.yaml"], tmp_path, env)
    try:
        node.wait_for_log("tether serving on", timeout=90)  # a loaded CI machine is slow
        node.wait_for_log("demo upstream API on")
        admin = re.findall(r"tat_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}", node.stderr)[0]
        env["TETHER_ADMIN_TOKEN"] = admin
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", moved(_walkthrough())],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert "allowed: GET /v1/invoices/7 -> {'id': 7" in out
        assert "refused: GET /admin/stats -> 403 denied by rule 'billing-admin-off-limits'" in out
        assert "'billing-refund' needs a human approval" in out
        assert "demo-key-not-a-secret" not in out + done.stderr

        found = subprocess.run(
            [".venv/bin/tether", "audit", "search", "--target", "billing-api", "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        events = [json.loads(line) for line in found.stdout.splitlines()]
        seen = {(e["kind"], e["decision"], e.get("rule")) for e in events}
        assert ("decision", "allow", "billing-read-invoices") in seen
        assert ("decision", "deny", "billing-admin-off-limits") in seen
        assert ("decision", "approval_required", "billing-refund") in seen
        assert ("http.exchange", "allow", "billing-read-invoices") in seen
        assert "demo-key-not-a-secret" not in found.stdout
    finally:
        node.stop()
