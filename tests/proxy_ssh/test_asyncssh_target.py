"""An asyncssh server as the target: host CA trust, host-CA mismatch, what it received."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncssh
import pytest

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import Stack


@dataclass
class AsyncsshTarget:
    port: int
    host_ca: asyncssh.SSHKey
    commands: list[str] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)


@pytest.fixture
async def asyncssh_target(stack: Stack) -> AsyncIterator[AsyncsshTarget]:
    host_ca = asyncssh.generate_private_key("ssh-ed25519")
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    host_cert = host_ca.generate_host_certificate(host_key, "host", principals=["127.0.0.1"])
    user_ca = await stack.broker.context.target_ca.public_key_line()
    authorized = asyncssh.import_authorized_keys(f"cert-authority {user_ca}\n")
    target = AsyncsshTarget(0, host_ca)

    async def handle(process: asyncssh.SSHServerProcess[str]) -> None:
        target.commands.append(process.command or "<shell>")
        target.logins.append(process.get_extra_info("username"))
        process.stdout.write(f"ran: {process.command}\n")
        process.exit(0)

    server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[(host_key, host_cert)],
        authorized_client_keys=authorized, process_factory=handle,
    )  # fmt: skip
    target.port = server.sockets[0].getsockname()[1]
    try:
        yield target
    finally:
        server.close()
        await server.wait_closed()


async def add(env: Env, name: str, port: int, host_ca: asyncssh.SSHKey) -> None:
    await env.stack.add_target(
        name,
        {
            "host": "127.0.0.1", "port": port, "users": ["root"],
            "host_ca": host_ca.export_public_key("openssh").decode().strip(),
            "credential": {"type": "certificate", "validity_seconds": 60},
        },
        {"env": "test"},
    )  # fmt: skip


async def test_host_ca_trust_and_canonical_command(
    env: Env, asyncssh_target: AsyncsshTarget
) -> None:
    await add(env, "app-1", asyncssh_target.port, asyncssh_target.host_ca)
    agent = await env.stack.agent()
    status, out, err = await agent.ssh("root@app-1", "echo  'x y'   z")
    assert (status, out) == (0, b"ran: echo 'x y' z\n"), err
    assert asyncssh_target.commands == ["echo 'x y' z"]
    assert asyncssh_target.logins == ["root"]


async def test_host_certificate_of_another_ca_refuses(
    env: Env, asyncssh_target: AsyncsshTarget
) -> None:
    await add(env, "app-2", asyncssh_target.port, asyncssh.generate_private_key("ssh-ed25519"))
    agent = await env.stack.agent()
    status, _, err = await agent.ssh("root@app-2", "echo hi")
    assert (status, err) == (1, b"Tether: target app-2: host key mismatch, refused\r\n")
    assert asyncssh_target.commands == []
