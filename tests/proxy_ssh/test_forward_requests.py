"""X11 and agent forwarding requests are refused and audited (DESIGN invariant 5): OpenSSH's
client asks for X11 (``ForwardX11`` with a display), asyncssh's for agent forwarding (to a
running ``ssh-agent``; OpenSSH's never asked here, whatever ``ForwardAgent`` said). asyncssh
refused both with nothing in the audit trail."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import asyncssh
import pytest

from tests.proxy_ssh.conftest import Env


async def _refused(env: Env, count: int) -> list[dict[str, str]]:
    refused: list[dict[str, str]] = []
    for _ in range(200):  # audited beside the answer
        refused = [
            json.loads(e["action"])["ssh"]
            for e in await env.stack.events("decision")
            if e["reason"] == "invalid-request"
        ]
        if len(refused) >= count:
            break
        await asyncio.sleep(0.02)
    return refused


async def test_x11_and_agent_forwarding_are_refused_and_audited(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket = tmp_path / "agent.sock"
    ssh_agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket)],
                                 stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(100):
            if socket.exists():
                break
            await asyncio.sleep(0.05)
        monkeypatch.setenv("DISPLAY", "127.0.0.1:0")  # ssh asks for X11 only with a display
        agent = await env.stack.agent()
        args = ["-o", "ForwardX11=yes"]
        status, out, err = await agent.ssh("root@web-1", "echo forwarded", args=args)
        assert (status, out) == (0, b"forwarded\n"), err  # the command still runs
        key = asyncssh.read_private_key(str(agent.key_path))
        cert = asyncssh.import_certificate(agent.certificate)
        async with asyncssh.connect(
            "127.0.0.1", env.stack.broker.port, username="root@web-1", known_hosts=None,
            client_keys=[(key, cert)], agent_path=str(socket), agent_forwarding=True,
            config=None,
        ) as conn:  # fmt: skip
            done = await conn.run("echo forwarded")
            assert (done.exit_status, done.stdout) == (0, "forwarded\n")
    finally:
        ssh_agent.terminate()
        ssh_agent.wait(10)
    refused = await _refused(env, 2)
    assert sorted(r for e in refused for r in e) == ["agent_forward", "x11_forward"], refused
    assert all(v == "requested" for e in refused for v in e.values())
