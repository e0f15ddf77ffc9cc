"""Gathered socket writes: same bytes in the same order, fewer sends, nothing held back."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.proxy_ssh.echoserver import echo_server
from tether.proxy.ssh import transport as gathering
from tether.proxy.ssh.transport import GatheringDialer, GatheringTransport


class _Recorder(asyncio.Transport):
    """The socket transport's side of a unit test: what was written, closed or aborted."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.events.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        self.events.append("close")
        self.closing = True

    def abort(self) -> None:
        self.events.append("abort")
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7


async def _one_pass() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_writes_of_one_pass_reach_the_socket_once_in_order() -> None:
    raw = _Recorder()
    transport = GatheringTransport(raw, asyncio.get_running_loop())
    transport.write(b"ab")
    transport.write(bytearray(b"cd"))
    transport.write(memoryview(b"ef"))
    assert raw.events == []  # not yet: at the end of the pass
    assert transport.get_write_buffer_size() == 7 + 6
    await _one_pass()
    assert raw.events == [b"abcdef"]
    transport.write(b"g")
    await _one_pass()
    assert raw.events == [b"abcdef", b"g"]


async def test_close_and_abort_hand_over_what_is_pending_first() -> None:
    for end in ("close", "abort"):
        raw = _Recorder()
        transport = GatheringTransport(raw, asyncio.get_running_loop())
        transport.write(b"disconnect")
        getattr(transport, end)()
        assert raw.events == [b"disconnect", end]
        transport.write(b"late")  # after the socket closed: dropped, as asyncio does
        await _one_pass()
        assert raw.events == [b"disconnect", end]


async def test_a_large_pass_is_handed_over_without_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gathering, "MAX_GATHER_BYTES", 10)
    raw = _Recorder()
    transport = GatheringTransport(raw, asyncio.get_running_loop())
    transport.write(b"123456")
    transport.write(b"7890ab")  # 12 bytes pending: over the limit
    assert raw.events == [b"1234567890ab"]
    transport.write(b"c")
    await _one_pass()
    assert raw.events == [b"1234567890ab", b"c"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=64), st.booleans()), max_size=40))
def test_any_writes_and_passes_keep_bytes_and_order(steps: list[tuple[bytes, bool]]) -> None:
    async def scenario() -> tuple[bytes, int]:
        raw = _Recorder()
        transport = GatheringTransport(raw, asyncio.get_running_loop())
        for data, end_of_pass in steps:
            transport.write(data)
            if end_of_pass:
                await _one_pass()
        await _one_pass()
        return b"".join(raw.events), len(raw.events)

    joined, sends = asyncio.run(scenario())
    assert joined == b"".join(data for data, _ in steps)
    assert sends <= sum(1 for _, end in steps if end) + 1


async def test_ssh_over_gathered_connections_both_ways() -> None:
    await _ssh_over_gathered_connections()


def test_ssh_over_gathered_connections_on_uvloop() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_ssh_over_gathered_connections())


async def _ssh_over_gathered_connections() -> None:
    """An asyncssh client dialled through :class:`GatheringDialer` to a server whose
    connections gather their writes (as the broker's do) moves a large stream intact."""
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    payload = bytes(range(256)) * 8192  # 2 MiB

    class Gathered(asyncssh.SSHServerConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(gathering.gather_writes(transport))

    async with (
        echo_server(Gathered, client_key) as port,
        asyncssh.connect(
            "127.0.0.1", port, username="u", client_keys=[client_key], known_hosts=None,
            agent_path=None, config=None, tunnel=GatheringDialer(),
        ) as conn,
    ):  # fmt: skip
        assert isinstance(conn.get_extra_info("peername"), tuple)
        result = await conn.run(input=payload, encoding=None, check=True)
    assert result.stdout == payload[::-1]
