"""A real ``tether serve`` on a temporary data directory, shared by a module's tests, and
the ``tether`` CLI run against it as a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TETHER = str(Path(sys.executable).parent / "tether")
TOKEN = re.compile(r"tat_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}")
SERVING = re.compile(r"tether serving on (http://127\.0\.0\.1:\d+)")
POLICY = (
    "rules:\n  - id: r\n    effect: allow\n    agents: [bot]\n    targets: [t]\n"
    "    mcp: {tools: [x]}\n"
)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}


def run(
    *args: str,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    stdin: bytes = b"",
    timeout: float = 60,
    **kwargs: object,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [TETHER, *args],
        cwd=cwd,
        env=clean_env() if env is None else env,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        **kwargs,  # type: ignore[arg-type]
    )


@dataclass
class Node:
    url: str
    token: str
    root: Path

    def env(self) -> dict[str, str]:
        return {**clean_env(), "TETHER_SERVER": self.url, "TETHER_ADMIN_TOKEN": self.token}

    def cli(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return run(*args, cwd=self.root, env=self.env(), stdin=stdin)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("node")
    (root / "pol").mkdir()
    (root / "pol" / "a.yaml").write_text(POLICY)
    log = (root / "serve.err").open("wb")
    proc = subprocess.Popen(
        [TETHER, "serve", "--policies", "pol", "--data-dir", "data", "--listen", "127.0.0.1:0"],
        cwd=root, env=clean_env(), stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            text = (root / "serve.err").read_text(errors="replace")
            served = SERVING.search(text)
            if served and TOKEN.search(text):
                break
            assert proc.poll() is None, text
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        yield Node(served.group(1), TOKEN.findall(text)[0], root)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
