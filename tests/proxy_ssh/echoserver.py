"""A loopback asyncssh server for tests of the broker's SSH connection classes: it accepts
one client key and answers every exec by writing its standard input back reversed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncssh


@asynccontextmanager
async def echo_server(
    connection_class: type[Any], client_key: asyncssh.SSHKey, *, ciphers: list[str] | None = None
) -> AsyncIterator[int]:
    """Serve on 127.0.0.1 with connections of ``connection_class``; yields the port."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return True

        def public_key_auth_supported(self) -> bool:
            return True

        def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
            return key.public_data == client_key.public_data

    async def echo(process: asyncssh.SSHServerProcess[bytes]) -> None:
        data = await process.stdin.read()
        process.stdout.write(data[::-1])
        process.exit(0)

    options = asyncssh.SSHServerConnectionOptions(
        server_factory=Server, server_host_keys=[host_key], process_factory=echo,
        encoding=None, encryption_algs=ciphers or (),
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: connection_class(loop, options, None, None), "127.0.0.1", 0
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
