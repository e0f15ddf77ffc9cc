"""Through the real SSH broker: an exec session's recording is <session>.<n>; `tether sessions
list` showed the session a second time as 'no recording', and `tether sessions show <session
id>` said there was no recording. It is listed once now, and `show` names its channels."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from tests.proxy_ssh.conftest import Env

TETHER = str(Path(sys.executable).parent / "tether")


async def test_an_ssh_session_is_one_session_with_its_recording(env: Env) -> None:
    agent = await env.stack.agent()
    status, out, _ = await agent.ssh("root@web-1", "echo hi")
    assert (status, out) == (0, b"hi\n")
    await env.stack.broker.stop()
    [start] = await env.stack.events("session.start")
    session_id = start["session_id"]
    config = env.stack.directory / "tether.yaml"
    config.write_text(
        f"data_dir: {env.stack.broker.data_dir}\n"
        f"database_url: sqlite+aiosqlite:///{env.stack.directory / 'tether.db'}\n"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TETHER, "sessions", *args, "-c", str(config)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    listed = await asyncio.to_thread(run, "list", "--json")
    rows = [(r["session_id"], r["state"]) for r in map(json.loads, listed.stdout.splitlines())]
    shown = await asyncio.to_thread(run, "show", session_id, "--json")
    assert (session_id, "no recording") not in rows, rows
    assert (f"{session_id}.1", "complete") in rows, rows
    assert shown.returncode == 5 and f"show one of {session_id}.1" in shown.stderr, shown.stderr
    channel = await asyncio.to_thread(run, "show", f"{session_id}.1", "--json")
    assert channel.returncode == 0, channel.stderr
