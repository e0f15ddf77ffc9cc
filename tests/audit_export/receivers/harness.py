"""Starting, killing and restarting a receiver process, and reading what it received."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]


class ReceiverProcess:
    """A receiver module run as ``python -m``; its records are JSON lines in ``out``."""

    def __init__(self, module: str, out: Path, args: list[str]) -> None:
        self.module = module
        self.out = out
        self.args = args
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self, *extra: str) -> int:
        """Start (again, on the same port once it has one); returns the port."""
        command = [sys.executable, "-m", self.module, "--out", str(self.out)]
        command += ["--port", str(self.port), *self.args, *extra]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            self.proc.kill()
            raise RuntimeError(f"{self.module} did not start: {line!r}")
        self.port = int(line.split()[1])
        return self.port

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would stop it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def records(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        data = self.out.read_bytes()
        lines = data[: data.rfind(b"\n") + 1].splitlines()  # a line being written is not yet
        return [json.loads(line) for line in lines if line.strip()]
