"""A target file for unit tests of tether.proxy.ssh.sftp_io: it applies reads and writes in
the order they are issued (each yields to the loop once, as a real request would) and
records each one."""

from __future__ import annotations

import asyncio


class FakeRemoteFile:
    """What each read and write asked, as ``(offset, size)``; the bytes as of when issued."""

    def __init__(self, content: bytes = b"") -> None:
        self.content = bytearray(content)
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, int]] = []

    async def read(self, size: int, offset: int) -> bytes:
        self.reads.append((offset, size))
        data = bytes(self.content[offset : offset + size])
        await asyncio.sleep(0)
        return data

    async def write(self, data: bytes, offset: int) -> int:
        self.writes.append((offset, len(data)))
        end = offset + len(data)
        if len(self.content) < end:
            self.content.extend(b"\0" * (end - len(self.content)))
        self.content[offset:end] = data
        await asyncio.sleep(0)
        return len(data)

    async def close(self) -> None:
        return None
