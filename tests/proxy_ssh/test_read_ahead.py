"""Read-ahead never serves stale or cut-short bytes (tether.proxy.ssh.sftp_io.RemoteHandle).

A unit test of one component: the target file is a recording fake that applies reads and
writes in the order they are issued. End to end, every download test in this package goes
through the same code against a real sshd.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.proxy_ssh.fakefile import FakeRemoteFile
from tether.proxy.ssh.sftp_io import RemoteHandle

KIB = 1024


def _handle(remote: FakeRemoteFile, gather: int = 255 * KIB, depth: int = 8) -> RemoteHandle:
    return RemoteHandle(remote, depth=depth, gather=gather)  # type: ignore[arg-type]


async def test_a_write_drops_what_was_read_ahead() -> None:
    remote = FakeRemoteFile(b"x" * (512 * KIB))
    handle = _handle(remote)
    await handle.read(0, 32 * KIB)
    await handle.write(96 * KIB, b"y" * (32 * KIB))
    assert await handle.read(32 * KIB, 32 * KIB) == b"x" * (32 * KIB)
    assert await handle.read(64 * KIB, 32 * KIB) == b"x" * (32 * KIB)
    assert await handle.read(96 * KIB, 32 * KIB) == b"y" * (32 * KIB)
    await handle.close()


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("next"), st.integers(0, 0)),
        st.tuples(st.just("seek"), st.integers(0, 700)),
        st.tuples(st.just("write"), st.integers(0, 700)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 900),
    request=st.integers(1, 64),
    gather=st.integers(1, 300),
    depth=st.integers(1, 6),
    ops=_OPS,
)
def test_every_read_is_what_the_file_holds(
    size: int, request: int, gather: int, depth: int, ops: list[tuple[str, int]]
) -> None:
    """Whatever the mix of sequential reads, seeks and writes, a read returns exactly the
    bytes of the file at that offset (never stale, never cut short)."""

    async def scenario() -> None:
        content = bytearray(bytes(range(251)) * 4)[:size]
        remote = FakeRemoteFile(bytes(content))
        handle = _handle(remote, gather=gather, depth=depth)
        offset = 0
        for op, value in ops:
            if op == "seek":
                offset = value
            elif op == "write":
                data = bytes([value % 256]) * 5
                await handle.write(value, data)
                end = value + len(data)
                content.extend(b"\0" * max(0, end - len(content)))
                content[value:end] = data
                continue
            data = await handle.read(offset, request)
            assert data == bytes(content[offset : offset + request])
            offset += request
        await handle.close()
        assert remote.content == content

    asyncio.run(scenario())
