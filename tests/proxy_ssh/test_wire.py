"""The broker's SSH connection classes (tether.proxy.ssh.wire) on real connections.

Each end-to-end test runs a 2 MiB stream both ways between an asyncssh server and an asyncssh
client dialled through :class:`BrokerDialer`, and counts the ``SSH_MSG_IGNORE`` packets each
side *received*: what the wire carried, whichever code sent it. One test pins asyncssh's own
behaviour (an empty ``SSH_MSG_IGNORE`` before every packet), so that an asyncssh release that
changes it shows up here.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import uvloop
from asyncssh.constants import MSG_IGNORE
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.echoserver import echo_server
from tether.proxy.ssh import wire
from tether.proxy.ssh.transport import GatheringDialer
from tether.proxy.ssh.wire import BrokerClientConnection, BrokerDialer, BrokerServerConnection

PAYLOAD = bytes(range(256)) * 8192  # 2 MiB


class _Counts:
    """Connection-level packet types received, per side (channel packets are logged by
    their channel)."""

    def __init__(self) -> None:
        self.server: Counter[int] = Counter()
        self.client: Counter[int] = Counter()


def _counting(base: type[Any], counter: Counter[int]) -> type[Any]:
    class Counting(base):  # type: ignore[misc, valid-type]
        def log_received_packet(self, pkttype: int, *args: Any, **kwargs: Any) -> None:
            counter[pkttype] += 1
            super().log_received_packet(pkttype, *args, **kwargs)

    return Counting


class _PlainDialer(GatheringDialer):
    """asyncssh's own client connection, made a counting subclass of itself."""

    connection_class: type[Any] = asyncssh.SSHClientConnection

    async def create_connection(self, session_factory: Any, host: str, port: int) -> Any:
        session = session_factory()
        session.__class__ = self.connection_class
        return await self.relay(session, host, port)


async def _transfer(
    server_base: type[Any], dialer: GatheringDialer, cipher: str, counts: _Counts
) -> Any:
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    server_class = _counting(server_base, counts.server)
    async with (
        echo_server(server_class, client_key, ciphers=[cipher]) as port,
        asyncssh.connect(
            "127.0.0.1", port, username="u", client_keys=[client_key], known_hosts=None,
            agent_path=None, config=None, tunnel=dialer, encryption_algs=[cipher],
        ) as conn,
    ):  # fmt: skip
        assert conn.get_extra_info("send_cipher") == cipher
        result = await conn.run(input=PAYLOAD, encoding=None, check=True)
        connection_type = type(conn)
    assert result.stdout == PAYLOAD[::-1]
    return connection_type


def _broker_dialer(counts: _Counts) -> BrokerDialer:
    dialer = BrokerDialer()
    dialer.connection_class = _counting(BrokerClientConnection, counts.client)
    return dialer


@pytest.mark.parametrize(
    "cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr"]
)
async def test_no_empty_ignore_packets_with_aead_or_ctr(cipher: str) -> None:
    counts = _Counts()
    kind = await _transfer(BrokerServerConnection, _broker_dialer(counts), cipher, counts)
    assert issubclass(kind, BrokerClientConnection)
    # The stream went both ways intact (at least 64 channel packets each way), with no IGNORE.
    assert counts.server[MSG_IGNORE] == 0
    assert counts.client[MSG_IGNORE] == 0


async def test_asyncssh_itself_sends_an_empty_ignore_before_every_packet() -> None:
    """What :mod:`tether.proxy.ssh.wire` leaves out: if this fails, asyncssh changed."""
    counts = _Counts()
    dialer = _PlainDialer()
    dialer.connection_class = _counting(asyncssh.SSHClientConnection, counts.client)
    await _transfer(asyncssh.SSHServerConnection, dialer, "aes128-gcm@openssh.com", counts)
    # One per packet sent after the key exchange: 2 MiB of 32 KiB channel packets is >= 64.
    assert counts.server[MSG_IGNORE] >= 64
    assert counts.client[MSG_IGNORE] >= 64


async def test_cbc_keeps_asyncssh_ignore_packets() -> None:
    """A CBC cipher is not in NO_IGNORE_CIPHERS: its countermeasure stays."""
    counts = _Counts()
    await _transfer(BrokerServerConnection, _broker_dialer(counts), "aes128-cbc", counts)
    assert counts.server[MSG_IGNORE] >= 64
    assert counts.client[MSG_IGNORE] >= 64


def test_broker_connections_on_uvloop() -> None:
    counts = _Counts()
    cipher = "aes128-gcm@openssh.com"
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_transfer(BrokerServerConnection, _broker_dialer(counts), cipher, counts))
    assert counts.server[MSG_IGNORE] == 0 and counts.client[MSG_IGNORE] == 0


async def test_another_connection_class_is_left_as_it_is() -> None:
    """asyncssh handing the dialer something unexpected: relayed, writes gathered, no change."""

    class Elsewhere(asyncssh.SSHClientConnection):
        pass

    dialer = BrokerDialer()
    seen: list[type[Any]] = []

    def factory() -> Any:
        session = Elsewhere(asyncio.get_running_loop(), options, wait=None)
        seen.append(type(session))
        return session

    options = await asyncssh.SSHClientConnectionOptions.construct(
        host="127.0.0.1", port=9, known_hosts=None, config=None
    )
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        transport, session = await dialer.create_connection(factory, "127.0.0.1", port)
        assert type(session) is Elsewhere and seen == [Elsewhere]
        transport.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_the_broker_leaves_them_out_with_openssh_on_both_legs(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the broker, with OpenSSH's ``sftp`` and ``sshd``: both legs are the broker's
    connection classes and negotiate a cipher whose IGNOREs are left out."""
    negotiated: list[tuple[type[Any], str, bool]] = []
    set_extra_info = wire._Wire.set_extra_info

    def spy(self: Any, **kwargs: Any) -> None:
        set_extra_info(self, **kwargs)
        if "send_cipher" in kwargs:
            negotiated.append((type(self), kwargs["send_cipher"], self._quiet_ignores))

    monkeypatch.setattr(wire._Wire, "set_extra_info", spy)
    agent = await env.stack.agent()
    local = tmp_path / "up.bin"
    local.write_bytes(os.urandom(200_000))
    remote = f"/tmp/tether-wire-{os.getpid()}-{tmp_path.name}.bin"
    status, _, err = await agent.sftp("root@web-1", f"put {local} {remote}\nrm {remote}\n")
    assert status == 0, err
    legs = {(issubclass(kind, BrokerServerConnection), cipher, quiet)
            for kind, cipher, quiet in negotiated}  # fmt: skip
    assert legs == {
        (True, "aes128-gcm@openssh.com", True),  # agent leg: OpenSSH's sftp client
        (False, "aes128-gcm@openssh.com", True),  # target leg: sshd
    }
    assert any(issubclass(kind, BrokerClientConnection) for kind, _, _ in negotiated)


# --- large socket reads handed to asyncssh in pieces -----------------------------------------


@settings(max_examples=80, deadline=None)
@given(size=st.integers(0, 5 * wire.FEED_BYTES), close_after=st.integers(0, 8))
def test_feed_in_pieces_keeps_every_byte_in_order(size: int, close_after: int) -> None:
    """Pieces are non-empty, at most FEED_BYTES, in order, and their concatenation is the
    read; once the connection is closed no further piece is fed."""
    data = bytes(i % 251 for i in range(size))
    fed: list[bytes] = []
    wire.feed_in_pieces(
        data, lambda piece: fed.append(bytes(piece)), lambda: len(fed) >= close_after
    )
    assert all(0 < len(piece) <= wire.FEED_BYTES for piece in fed)
    whole = -(-size // wire.FEED_BYTES)
    assert len(fed) == min(whole, close_after)
    assert b"".join(fed) == data[: len(fed) * wire.FEED_BYTES]


class _Recorder(asyncssh.connection.SSHConnection):
    """Stands for asyncssh's ``data_received``: records what it is handed; closes (drops its
    transport, as asyncssh's ``_force_close`` does) after ``close_after`` pieces."""

    def __init__(self, close_after: int) -> None:  # no asyncssh state needed
        self.got: list[bytes] = []
        self.close_after = close_after
        self._transport = object()  # type: ignore[assignment]

    def data_received(self, data: bytes, datatype: Any = None) -> None:
        self.got.append(bytes(data))
        if len(self.got) >= self.close_after:
            self._transport = None


class _Probe(wire._Wire, _Recorder):
    pass


def test_a_large_read_reaches_asyncssh_in_pieces_until_it_closes() -> None:
    small = _Probe(close_after=99)
    small.data_received(b"x" * wire.FEED_BYTES)
    assert small.got == [b"x" * wire.FEED_BYTES]  # one packet's worth: handed over as it is
    read = os.urandom(256 * 1024)
    whole = _Probe(close_after=99)
    whole.data_received(read)
    assert len(whole.got) == 8 and b"".join(whole.got) == read
    closing = _Probe(close_after=2)
    closing.data_received(read)
    assert closing.got == [read[: wire.FEED_BYTES], read[wire.FEED_BYTES : 2 * wire.FEED_BYTES]]
