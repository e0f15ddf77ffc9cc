"""A real interactive ``bash`` under a pseudo-terminal, recorded as an SSH front-end would.

The shell runs in a new session with the pty as its controlling terminal (``setsid
--ctty``), so it behaves as it does behind ``ssh -t``: it echoes, prompts, and draws
colours. Every byte the terminal shows goes to the recorder and is also returned, so a test
can compare what was recorded with what the terminal really showed.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import time

from tether.audit.recordings import Recorder

PROMPT = "tether$ "


def run_shell(recorder: Recorder, lines: list[str], *, timeout: float = 20.0) -> bytes:
    """Type ``lines`` into a fresh ``bash``; returns every byte of terminal output."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {"PATH": os.environ["PATH"], "TERM": "xterm-256color", "PS1": PROMPT, "HOME": "/tmp"}
    proc = subprocess.Popen(
        ["setsid", "--ctty", "bash", "--norc", "--noprofile", "-i"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    captured = bytearray()
    deadline = time.monotonic() + timeout
    try:
        _read_until(master, captured, recorder, PROMPT.encode(), deadline)
        for line in lines:
            data = line.encode()
            recorder.input(data)
            os.write(master, data)
            _read_until(master, captured, recorder, PROMPT.encode(), deadline)
        recorder.input(b"exit\n")
        os.write(master, b"exit\n")
        _read_until(master, captured, recorder, None, deadline)
    finally:
        os.close(master)
        proc.wait(timeout=10)
    return bytes(captured)


def _read_until(
    fd: int, captured: bytearray, recorder: Recorder, marker: bytes | None, deadline: float
) -> None:
    """Read output until ``marker`` appears after what was read before (None: until EOF)."""
    start = len(captured)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the shell exited and the pty closed
            chunk = b""
        if not chunk:
            if marker is None:
                return
            raise AssertionError(f"shell exited early; output: {bytes(captured)!r}")
        captured += chunk
        recorder.output(chunk)
        if marker is not None and marker in captured[start:]:
            return
    raise AssertionError(f"timed out; output so far: {bytes(captured)!r}")
