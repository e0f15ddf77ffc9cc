"""End to end: the real ``tether serve`` process, its reloads and its shutdown."""

from __future__ import annotations

import re
import signal
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

RULES = """\
rules:
  - id: {id}
    effect: allow
    agents: [bot]
    targets: [github]
    mcp: {{tools: ["{tool}"]}}
"""
T = TypeVar("T")

SEARCH = {
    "agent": {"id": "bot"},
    "target": {"name": "github"},
    "action": {"mcp": {"tool": "search_code", "arguments": {}}},
}


class Node:
    """A ``tether serve`` subprocess whose standard error is collected as it comes."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, pattern: str, timeout: float = 15) -> re.Match[str]:
        return wait_until(lambda: re.search(pattern, self.stderr), timeout, self)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=20)
        self._reader.join(timeout=5)
        return code


def wait_until(probe: Callable[[], T | None], timeout: float, node: Node) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        if node.process.poll() is not None:
            node._reader.join(timeout=5)
            pytest.fail(f"tether exited {node.process.returncode}:\n{node.stderr}")
        time.sleep(0.05)
    pytest.fail(f"timed out; tether's stderr:\n{node.stderr}")


@pytest.fixture
def start(
    tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]
) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start(*extra: str) -> Node:
        args = [str(tether_bin), "serve", "--policies", "pol", "--data-dir", "data", *extra]
        node = Node(args, tmp_path, clean_env)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        if node.process.poll() is None:
            node.process.kill()
            node.process.wait()


def write_atomically(path: Path, text: str) -> None:
    """Write like an editor that saves safely: a hidden temporary file, then a rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def test_serve_decides_reloads_refuses_and_stops(
    tmp_path: Path, start: Callable[..., Node]
) -> None:
    policy = tmp_path / "pol" / "github.yaml"
    policy.parent.mkdir()
    policy.write_text(RULES.format(id="search", tool="search_*"))
    node = start("--listen", "127.0.0.1:0")
    url = "http://" + node.wait_for_log(r"tether serving on http://(127\.0\.0\.1:\d+)")[1]
    # The node's interpreter settings (tether.node.tune_interpreter, freeze_startup_heap).
    tuned = node.wait_for_log(r"GIL switch interval ([\d.]+) ms, (\d+) start-up objects")
    assert float(tuned[1]) == 0.5
    assert int(tuned[2]) > 10_000

    with httpx.Client(base_url=url, timeout=5) as client:
        health = client.get("/healthz").json()
        first = health["policy_version"]
        assert health == {
            "status": "ok",
            "policy_version": first,
            "rules": 1,
            "revocations": "verified",
        }
        answer = client.post("/v1/decide", json=SEARCH).json()
        assert (answer["decision"], answer["rule"], answer["policy_version"]) == (
            "allow", "search", first
        )  # fmt: skip

        # A valid change takes effect without a restart.
        write_atomically(policy, RULES.format(id="list", tool="list_*"))
        second = wait_until(lambda: _new_version(client, first), 15, node)
        node.wait_for_log(f"policy set {re.escape(second)} in force: 1 rules")
        answer = client.post("/v1/decide", json=SEARCH).json()
        assert (answer["decision"], answer["reason"], answer["policy_version"]) == (
            "deny", "default-deny", second
        )  # fmt: skip

        # An invalid change is refused loudly; the set in force stays, and so does the node.
        write_atomically(policy, "rules:\n  - id: broken\n    effect: perhaps\n")
        node.wait_for_log(r"ERROR .*policy reload refused, " + re.escape(second))
        assert "github.yaml" in node.stderr.split("policy reload refused")[-1]
        assert client.get("/healthz").json()["policy_version"] == second
        assert client.post("/v1/decide", json=SEARCH).json()["policy_version"] == second

    assert node.stop() == 0
    assert "SIGTERM received, shutting down" in node.stderr
    assert "tether stopped" in node.stderr
    assert "Traceback" not in node.stderr
    with sqlite3.connect(tmp_path / "data" / "tether.db") as db:
        loads = db.execute("SELECT status, version FROM policy_loads ORDER BY id").fetchall()
    assert loads == [("active", first), ("active", second), ("rejected", None)]


def _new_version(client: httpx.Client, old: str) -> str | None:
    version: str = client.get("/healthz").json()["policy_version"]
    return version if version != old else None


def test_sigint_stops_cleanly_too(tmp_path: Path, start: Callable[..., Node]) -> None:
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "a.yaml").write_text(RULES.format(id="a", tool="x"))
    node = start("--listen", "127.0.0.1:0")
    node.wait_for_log("tether serving on")
    assert node.stop(signal.SIGINT) == 0
    assert "SIGINT received, shutting down" in node.stderr


def test_serve_refuses_to_start_on_policies_that_do_not_load(
    tmp_path: Path, start: Callable[..., Node]
) -> None:
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "a.yaml").write_text("rules:\n  - id: x\n    effect: perhaps\n")
    node = start("--listen", "127.0.0.1:0")
    assert node.process.wait(timeout=30) == 2
    node._reader.join(timeout=5)
    assert "tether: error: policies did not load: a.yaml:" in node.stderr
    assert "Traceback" not in node.stderr


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ("listen: nowhere\n", "listen: expected HOST:PORT, got 'nowhere'"),
        (
            "trusted_proxies: ['*']\n",
            "trusted_proxies: expected IP addresses or networks (10.0.0.0/8, ::1), got '*'",
        ),
    ],
)
def test_serve_refuses_a_bad_config(
    tmp_path: Path, start: Callable[..., Node], config: str, error: str
) -> None:
    (tmp_path / "tether.yaml").write_text(config)
    node = start("--config", "tether.yaml")
    assert node.process.wait(timeout=30) == 2
    node._reader.join(timeout=5)
    assert node.stderr.strip() == f"tether: error: tether.yaml: {error}"


def test_serve_refuses_a_busy_port(tmp_path: Path, start: Callable[..., Node]) -> None:
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "a.yaml").write_text(RULES.format(id="a", tool="x"))
    first = start("--listen", "127.0.0.1:0")
    address = first.wait_for_log(r"tether serving on http://(127\.0\.0\.1:\d+)")[1]
    second = start("--listen", address)
    assert second.process.wait(timeout=30) == 2
    second._reader.join(timeout=5)
    assert f"tether: error: cannot listen on {address}: address already in use" in second.stderr
    assert first.stop() == 0


def test_serve_refuses_a_sink_whose_secret_is_missing(
    tmp_path: Path, start: Callable[..., Node]
) -> None:
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "a.yaml").write_text(RULES.format(id="a", tool="x"))
    (tmp_path / "tether.yaml").write_text(
        "audit:\n  sinks:\n    - name: splunk\n      kind: hec\n"
        "      url: https://127.0.0.1:8088\n      token_env: SPLUNK_HEC_TOKEN_UNSET\n"
    )
    node = start("--config", "tether.yaml", "--listen", "127.0.0.1:0")
    assert node.process.wait(timeout=60) == 2
    node._reader.join(timeout=5)
    assert "tether: error: audit.sinks:" in node.stderr
    assert "SPLUNK_HEC_TOKEN_UNSET" in node.stderr
    assert "Traceback" not in node.stderr


def _refused_from(url: str, forwarded_for: str) -> None:
    """An unauthenticated broker request (audited as ``token.refused`` with the client's
    address), sent from 127.0.0.1 with an ``X-Forwarded-For`` naming another address."""
    headers = {"X-Forwarded-For": forwarded_for, "X-Forwarded-Proto": "https"}
    answer = httpx.get(f"{url}/t/anything/x", headers=headers, timeout=5)
    assert answer.status_code == 401


def _refused_sources(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            "SELECT source_ip FROM audit_events WHERE kind = 'token.refused' ORDER BY seq"
        ).fetchall()
    return [row[0] for row in rows]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("", "127.0.0.1"),  # the default: no peer is a trusted proxy, not even loopback
        ("trusted_proxies: [10.9.0.0/16]\n", "127.0.0.1"),  # another peer is
        ("trusted_proxies: [127.0.0.1]\n", "203.0.113.9"),  # this one is
    ],
)
def test_forwarded_for_is_believed_only_from_trusted_proxies(
    tmp_path: Path, start: Callable[..., Node], config: str, expected: str
) -> None:
    """uvicorn believes ``X-Forwarded-For`` from 127.0.0.1 unless told otherwise: a client
    on the node's own machine could then choose the ``source_ip`` that policies (``when``)
    and the audit trail see. The node believes it only from ``trusted_proxies``."""
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "a.yaml").write_text(RULES.format(id="a", tool="x"))
    (tmp_path / "tether.yaml").write_text("listen: 127.0.0.1:0\n" + config)
    node = start("--config", "tether.yaml")
    url = "http://" + node.wait_for_log(r"tether serving on http://(127\.0\.0\.1:\d+)")[1]
    _refused_from(url, "203.0.113.9")
    assert node.stop() == 0
    assert _refused_sources(tmp_path / "data" / "tether.db") == [expected]


def test_sinks_in_clear_start_with_a_warning(tmp_path: Path, start: Callable[..., Node]) -> None:
    """A SIEM sink without TLS is allowed (an explicit choice), but never silently."""
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "a.yaml").write_text(RULES.format(id="a", tool="x"))
    (tmp_path / "tether.yaml").write_text(
        "listen: 127.0.0.1:0\n"
        "audit:\n"
        "  sinks:\n"
        "    - {name: plain-hec, kind: hec, url: 'http://127.0.0.1:9/c', token: t}\n"
        "    - {name: plain-hook, kind: webhook, url: 'http://127.0.0.1:9/h', secret: s}\n"
        "    - {name: plain-syslog, kind: syslog, host: 127.0.0.1, port: 9, transport: tcp}\n"
        "    - {name: tls-hook, kind: webhook, url: 'https://127.0.0.1:9/h', secret: s}\n"
        "    - {name: unused, kind: syslog, host: 127.0.0.1, transport: tcp, enabled: false}\n"
    )
    node = start("--config", "tether.yaml")
    node.wait_for_log("tether serving on")
    assert node.stop() == 0
    warnings = re.findall(r"WARNING .*(insecure: .*)", node.stderr)
    assert warnings == [
        "insecure: audit sink 'plain-hec' sends events and its HEC token over plain http",
        "insecure: audit sink 'plain-hook' sends events over plain http",
        "insecure: audit sink 'plain-syslog' sends events over plain TCP (no TLS)",
    ]


def test_a_database_others_may_read_is_named_at_start(
    tmp_path: Path, start: Callable[..., Node]
) -> None:
    """A new database is made 0600; one others may read (made before that, or copied in)
    is named with its mode in a warning at every start, and the node serves all the same."""
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "github.yaml").write_text(RULES.format(id="search", tool="search_*"))
    first = start("--listen", "127.0.0.1:0")
    first.wait_for_log(r"tether serving on")
    assert first.stop() == 0
    database = tmp_path / "data" / "tether.db"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert "others may read it" not in first.stderr
    database.chmod(0o644)
    second = start("--listen", "127.0.0.1:0")
    second.wait_for_log(r"tether\.db has mode 0644: others may read it")
    second.wait_for_log(r"tether serving on")
    assert second.stop() == 0
