"""Contiguous SFTP writes are gathered into large target writes (tether.proxy.ssh.sftp_io).

A unit test of one component: the target file is a recording fake. End to end, every upload
test in this package goes through the same code against a real sshd.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.proxy_ssh.fakefile import FakeRemoteFile
from tether.proxy.ssh import sftp_io
from tether.proxy.ssh.sftp_io import COALESCE_SECONDS, RemoteHandle


def _handle(remote: FakeRemoteFile, gather: int = 256 * 1024) -> RemoteHandle:
    return RemoteHandle(remote, depth=4, gather=gather)  # type: ignore[arg-type]


async def test_sequential_32k_writes_become_few_large_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Blocks are cut by size here: a loaded machine can take longer than the gathering
    # deadline (COALESCE_SECONDS from a block's first write) for seven writes, which then
    # sent blocks early and failed the count now and then.
    monkeypatch.setattr(sftp_io, "COALESCE_SECONDS", 30.0)
    remote = FakeRemoteFile()
    handle = _handle(remote, gather=255 * 1024)
    data = bytes(range(256)) * 4096  # 1 MiB
    for offset in range(0, len(data), 32 * 1024):
        await handle.write(offset, data[offset : offset + 32 * 1024])
    await handle.close()
    assert bytes(remote.content) == data
    assert len(remote.writes) == 5  # 7 writes of 32 KiB per block (224 KiB), not 32 requests
    assert all(size <= 255 * 1024 for _, size in remote.writes)


async def test_a_write_left_open_reaches_the_target_promptly() -> None:
    remote = FakeRemoteFile()
    handle = _handle(remote)
    await handle.write(0, b"log line\n")
    assert remote.writes == []  # gathered for now
    await asyncio.sleep(COALESCE_SECONDS * 4)
    assert bytes(remote.content) == b"log line\n"  # sent without a close or another write


async def test_other_operations_send_the_gathered_block_first() -> None:
    remote = FakeRemoteFile()
    handle = _handle(remote)
    await handle.write(0, b"abc")
    assert await handle.read(0, 3) == b"abc"  # read after write sees the write
    await handle.write(3, b"def")
    await handle.flush()  # what stat, setstat and fsync call first
    assert bytes(remote.content) == b"abcdef"


writes = st.lists(
    st.tuples(st.integers(0, 4096), st.binary(min_size=1, max_size=1500)), max_size=40
)


@settings(max_examples=60, deadline=None)
@given(writes, st.integers(1, 8192))
def test_the_target_ends_with_what_the_agent_wrote_in_order(
    sequence: list[tuple[int, bytes]], gather: int
) -> None:
    """Any writes (contiguous, overlapping, with holes), any gather size: the target file is
    exactly the agent's writes applied in the agent's order."""

    async def run() -> tuple[bytearray, bytearray]:
        remote, expected = FakeRemoteFile(), bytearray()
        handle = _handle(remote, gather)
        for offset, data in sequence:
            await handle.write(offset, data)
            end = offset + len(data)
            if len(expected) < end:
                expected.extend(b"\0" * (end - len(expected)))
            expected[offset:end] = data
        await handle.close()
        return remote.content, expected

    got, expected = asyncio.run(run())
    assert got == expected


async def test_a_failed_write_is_reported_at_close() -> None:
    class Failing(FakeRemoteFile):
        async def write(self, data: bytes, offset: int) -> int:
            raise OSError("disk full")

    handle = RemoteHandle(Failing(), depth=2)  # type: ignore[arg-type]
    await handle.write(0, b"x" * 10)
    raised: Any = None
    try:
        await handle.close()
    except OSError as error:
        raised = error
    assert raised is not None and "disk full" in str(raised)
