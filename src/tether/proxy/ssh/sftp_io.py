"""Moving file bytes between the agent's SFTP channel and the target's, fast and counted.

The SFTP server of asyncssh answers one request at a time, so a request that waited for the
target before the next is read would cap a transfer at one block per round trip. A handle
therefore keeps the target busy:

* **reads ahead** while the agent reads sequentially: up to ``depth`` blocks (and at most
  :data:`READ_AHEAD_BYTES`) past the last request are already asked of the target (only of a
  file the policy allowed to be read). A write on the handle drops what was read ahead (it
  may hold the bytes the write replaces);
* **writes behind**: a write is acknowledged once it is handed to the target, with at most
  ``depth`` writes in flight. A failed write is reported to the agent on its next request on
  that handle, and at ``close`` at the latest, which then fails: the agent never sees a
  successful close of a file the target did not fully accept, and the audit record of the
  transfer says it failed.
* **coalesces contiguous writes**: clients that write small requests (32 KiB is common;
  OpenSSH 9.2's ``sftp`` reads the server's limits and writes 255 KiB); contiguous
  writes are gathered into one target write of up to ``gather`` bytes
  (``ssh.sftp_block_size``, the size of the target leg's requests), so the target leg carries
  a few large requests instead of many small ones. A gathered block is sent when it is
  full, when a write does not continue it, before any other operation on the handle (read,
  stat, setstat, fsync, close), and at the latest :data:`COALESCE_SECONDS` after its first
  byte, so a file written and left open still reaches the target promptly. Blocks are sent
  in the order the agent wrote them, so overlapping rewrites land as the agent ordered them.

:class:`StreamDigest` hashes what went through in file order (SFTP clients pipeline and may
answer out of order), so the audit record carries the SHA-256 of the file as transferred;
a transfer that was not one sequential pass (seeks, rewrites, holes) gets no digest. Reads
and writes are counted apart (a handle opened for both may do both): the bytes the agent
read are a download whatever else the handle was opened for. It
hashes on the event loop, as each block arrives in order: handing blocks to a worker thread
(hashlib lets go of the GIL for them) cost the broker more CPU per MB than the hashing
itself, in the hand-offs and the GIL's back and forth (docs/ssh-broker.md has the figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Coroutine
from typing import Any, Final, cast

import asyncssh

MAX_PENDING_BYTES: Final = 64 * 1024 * 1024
READ_AHEAD_BYTES: Final = 8 * 1024 * 1024
COALESCE_BYTES: Final = 255 * 1024  # default gather size: OpenSSH sftp-server's largest write
COALESCE_SECONDS: Final = 0.005


class StreamDigest:
    """SHA-256 of bytes fed at offsets, in offset order; None once not one sequential pass."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._next = 0
        self._pending: dict[int, bytes] = {}
        self._pending_bytes = 0
        self.size = 0
        self.broken = False

    def feed(self, offset: int, data: bytes) -> None:
        self.size += len(data)
        if self.broken or not data:
            return
        if offset < self._next or offset in self._pending:
            self._break()
            return
        if offset > self._next:
            self._pending[offset] = data
            self._pending_bytes += len(data)
            if self._pending_bytes > MAX_PENDING_BYTES:
                self._break()
            return
        self._take(data)
        while self._next in self._pending:
            chunk = self._pending.pop(self._next)
            self._pending_bytes -= len(chunk)
            self._take(chunk)

    def _take(self, data: bytes) -> None:
        self._next += len(data)
        self._hash.update(data)

    def _break(self) -> None:
        self.broken = True
        self._pending.clear()
        self._pending_bytes = 0

    def hexdigest(self) -> str | None:
        if self.broken or self._pending:
            return None
        return self._hash.hexdigest()


def _retrieve(task: asyncio.Task[bytes]) -> None:
    """Mark a read's outcome as seen (a dropped read ahead may fail unobserved)."""
    if not task.cancelled():
        task.exception()


class RemoteHandle:
    """An open file on the target, with read-ahead and write-behind."""

    def __init__(
        self, remote: asyncssh.SFTPClientFile, *, depth: int, gather: int = COALESCE_BYTES
    ) -> None:
        self.remote = remote
        self.depth = depth
        self.gather = gather  # the largest block contiguous writes are gathered into
        self.read_digest = StreamDigest()  # the bytes the agent read
        self.write_digest = StreamDigest()  # the bytes the agent wrote
        self._ahead: dict[int, asyncio.Task[bytes]] = {}
        self._ahead_size = 0
        self._writes: set[asyncio.Task[int]] = set()
        self._room = asyncio.Event()  # set while fewer than ``depth`` writes are in flight
        self._room.set()
        self._error: BaseException | None = None
        self._block = bytearray()  # contiguous writes not yet sent, from ``_block_offset``
        self._block_offset = 0
        self._block_timer: asyncio.TimerHandle | None = None

    # --- reads -------------------------------------------------------------------------------

    async def read(self, offset: int, size: int) -> bytes:
        self._send_block()
        self.raise_pending()
        task = self._ahead.pop(offset, None)
        if task is None or size != self._ahead_size:
            self._drop_ahead()
            task = self._fetch(offset, size)
        self._ahead_size = size
        data = await task
        self.read_digest.feed(offset, data)
        if len(data) == size:
            self._extend_ahead(offset + size, size)
        else:
            self._drop_ahead()
        return data

    def _fetch(self, offset: int, size: int) -> asyncio.Task[bytes]:
        read = cast(Coroutine[Any, Any, bytes], self.remote.read(size, offset))
        task = asyncio.ensure_future(read)
        task.add_done_callback(_retrieve)
        return task

    def _extend_ahead(self, start: int, size: int) -> None:
        blocks = max(1, min(self.depth, READ_AHEAD_BYTES // max(size, 1)))
        for i in range(blocks):
            offset = start + i * size
            if offset not in self._ahead:
                self._ahead[offset] = self._fetch(offset, size)

    def _drop_ahead(self) -> None:
        # Not cancelled: asyncssh splits a large read into sub-requests whose errors would go
        # unretrieved; a read ahead that is no longer wanted just finishes and is dropped.
        self._ahead.clear()

    # --- writes ------------------------------------------------------------------------------

    async def write(self, offset: int, data: bytes) -> int:
        self.raise_pending()
        while len(self._writes) >= self.depth:
            self._room.clear()
            await self._room.wait()
        self.raise_pending()
        self._drop_ahead()  # read ahead before this write: it may hold what the write replaces
        self.write_digest.feed(offset, data)
        block = self._block
        if offset == self._block_offset + len(block) and len(block) + len(data) <= self.gather:
            block += data
        else:
            self._send_block()
            self._block_offset = offset
            self._block += data
        if len(self._block) >= self.gather:
            self._send_block()
        elif self._block_timer is None:
            loop = asyncio.get_running_loop()
            self._block_timer = loop.call_later(COALESCE_SECONDS, self._send_block)
        return len(data)

    def _send_block(self) -> None:
        """Hand the gathered block to the target now (in order: the write starts at once)."""
        if self._block_timer is not None:
            self._block_timer.cancel()
            self._block_timer = None
        if not self._block:
            return
        data, self._block = bytes(self._block), bytearray()
        task = asyncio.ensure_future(self.remote.write(data, self._block_offset))
        self._writes.add(task)
        task.add_done_callback(self._write_done)

    def _write_done(self, task: asyncio.Task[int]) -> None:
        self._writes.discard(task)
        if len(self._writes) < self.depth:
            self._room.set()
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()

    async def flush(self) -> None:
        """Send the gathered block, wait for every write in flight; raise the first failure."""
        self._send_block()
        if self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)
        self.raise_pending()

    def raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def close(self) -> None:
        """Flush, then close the remote file (raises the first failure)."""
        self._drop_ahead()
        try:
            await self.flush()
        finally:
            with contextlib.suppress(Exception):
                await self.remote.close()
