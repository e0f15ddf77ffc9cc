"""The JSON Lines sink: one OCSF event per line, in size-rotated files.

``path`` is the file being written; when it reaches ``max_bytes`` it becomes ``path.1``,
the previous ``path.1`` becomes ``path.2``, and so on up to ``path.<keep>``; older files
are deleted. Rotation happens between batches, never inside one, so a batch is in one file.

Acknowledgement is the disk's: a batch is written, flushed and ``fsync``-ed (``fsync:
true``, the default) before :meth:`JsonlSink.deliver` returns, and so is the directory
after the file was created or rotated (else its new name may not survive a power loss).
A crash during a write leaves the file ending in a partial line; at its next start the
sink cuts the file back to its last complete line (that batch was not acknowledged, so it
will be written again), so every line of the file is always one whole JSON event. Files
are created with mode 0600: they hold the audit trail.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from tether.audit.events import AuditEvent
from tether.audit.ocsf import to_ocsf
from tether.audit.sinks.base import SinkError
from tether.audit.sinks.config import JsonlSinkConfig

_FILE_MODE = 0o600


def ocsf_line(event: AuditEvent) -> bytes:
    """One event as a compact JSON line (ASCII, so no encoding questions downstream)."""
    return json.dumps(to_ocsf(event), separators=(",", ":"), allow_nan=False).encode() + b"\n"


def rotated(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


class JsonlSink:
    """Appends batches to ``config.path``, rotating by size."""

    def __init__(self, config: JsonlSinkConfig) -> None:
        self.name = config.name
        self.config = config
        self._file: BinaryIO | None = None
        self._new_name = False  # a file was created or renamed: flush the directory too
        self._lock = asyncio.Lock()

    async def deliver(self, events: Sequence[AuditEvent]) -> None:
        async with self._lock:
            try:  # the lines are built in the thread too: CPU work, off the event loop
                await asyncio.to_thread(self._write_events, events)
            except OSError as error:
                self._close_file()
                raise SinkError(f"cannot write {self.config.path}: {error}") from None

    async def close(self) -> None:
        async with self._lock:
            self._close_file()

    def _write_events(self, events: Sequence[AuditEvent]) -> None:
        self._write(b"".join(ocsf_line(event) for event in events))

    def _write(self, data: bytes) -> None:
        handle = self._open()
        if handle.tell() > 0 and handle.tell() + len(data) > self.config.max_bytes:
            self._close_file()
            self._rotate()
            handle = self._open()
        handle.write(data)
        handle.flush()
        if self.config.fsync:
            os.fsync(handle.fileno())
            if self._new_name:
                # The file's data is on disk, but not yet its name: after a power loss a
                # file created (or renamed by a rotation) since the directory was last
                # flushed may be gone, with batches the cursor counts as delivered.
                _fsync_directory(self.config.path.parent)
                self._new_name = False

    def _open(self) -> BinaryIO:
        if self._file is None:
            path = self.config.path
            path.parent.mkdir(parents=True, exist_ok=True)
            self._new_name = self._new_name or not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
            handle = os.fdopen(fd, "r+b")
            _cut_partial_line(handle)
            self._file = handle
        return self._file

    def _rotate(self) -> None:
        self._new_name = True
        path, keep = self.config.path, self.config.keep
        if keep == 0:
            path.unlink(missing_ok=True)
            return
        rotated(path, keep).unlink(missing_ok=True)
        for index in range(keep - 1, 0, -1):
            if rotated(path, index).exists():
                rotated(path, index).replace(rotated(path, index + 1))
        path.replace(rotated(path, 1))

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fsync_directory(directory: Path) -> None:
    """Flush ``directory``'s entries (names created, renamed, removed) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cut_partial_line(handle: Any) -> None:
    """Truncate after the last newline (a crash may have left half a line); seek to end."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return
    position = size
    while position > 0:
        step = min(65536, position)
        handle.seek(position - step)
        chunk = handle.read(step)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = position - step + newline + 1
            break
        position -= step
    else:
        end = 0
    if end != size:
        handle.truncate(end)
    handle.seek(end)
