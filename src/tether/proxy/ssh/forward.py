"""Local port forwarding (``ssh -L``, ``direct-tcpip``): decided, then relayed and recorded.

Each forwarded connection is decided as ``{"ssh": {"forward": "host:port"}}`` with the
destination exactly as the agent asked for it (rules list ``ssh.forwards``); the target
(not Tether) connects to the destination, through the upstream SSH connection, so the
destination is resolved where the operator expects it. On refusal the channel is closed at
once. An allowed forward is audited when it ends, with the bytes each way and its duration.
Remote forwarding (``-R``), agent and X11 forwarding are refused by the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import asyncssh

from tether.proxy.ssh.session import BrokerSession, UpstreamError

log = logging.getLogger(__name__)

CHUNK = 65536
Handler = Callable[[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]], Awaitable[None]]


def forward_handler(session: BrokerSession, host: str, port: int) -> Handler:
    """The stream handler of one forwarded connection to ``host:port``."""

    async def handle(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
        session.channel_opened()
        try:
            await _forward(session, host, port, reader, writer)
        finally:
            session.channel_closed()
            writer.close()

    return handle


async def _forward(
    session: BrokerSession,
    host: str,
    port: int,
    reader: asyncssh.SSHReader[bytes],
    writer: asyncssh.SSHWriter[bytes],
) -> None:
    destination = f"{host}:{port}"
    decision = await session.decide({"ssh": {"forward": destination}})
    if not decision.allowed:
        return
    try:
        upstream = await session.upstream()
        remote_reader, remote_writer = await upstream.open_connection(host, port, encoding=None)
    except (UpstreamError, asyncssh.Error, OSError) as error:
        log.info("session %s: forward to %s failed: %r", session.id, destination, error)
        await _audit(session, destination, 0, 0, 0.0, error="the target could not connect")
        return
    started = time.monotonic()
    sent, received = await asyncio.gather(
        _copy(reader, remote_writer), _copy(remote_reader, writer)
    )
    session.bytes_in += sent
    session.bytes_out += received
    await _audit(session, destination, sent, received, time.monotonic() - started)


async def _copy(source: asyncssh.SSHReader[bytes], sink: asyncssh.SSHWriter[bytes]) -> int:
    total = 0
    with contextlib.suppress(asyncssh.Error, OSError, ConnectionError):
        while data := await source.read(CHUNK):
            total += len(data)
            sink.write(data)
            await sink.drain()
    with contextlib.suppress(Exception):
        sink.write_eof()
    return total


async def _audit(
    session: BrokerSession,
    destination: str,
    sent: int,
    received: int,
    duration: float,
    *,
    error: str | None = None,
) -> None:
    auditor = session.context.services.auditor
    if auditor is None:
        return
    detail = {"forward": destination, "bytes_in": sent, "bytes_out": received}
    if error is not None:
        detail["error"] = error
    await auditor.session_end(
        session.subject,
        protocol="ssh-forward",
        target=session.target.name,
        duration_ms=duration * 1000,
        bytes_in=sent,
        bytes_out=received,
        reason="error" if error else "closed",
        detail=detail,
    )
