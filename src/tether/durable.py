"""Small files replaced whole and durably: a reader sees the old content or the new, never
a mix, and the new content survives a crash once :func:`replace_file` returned."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def replace_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to a temporary file beside ``path`` (``mode``), fsync it, rename it
    over ``path``, and fsync the directory so that the rename is durable too. The temporary
    is created afresh (a leftover one removed first, never followed if a link)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temporary, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    temporary.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def replace_in_directory(path: Path, data: bytes) -> None:
    """:func:`replace_file`, making the directory first (mode 0700) when it is missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace_file(path, data)


class VersionedFile:
    """A node's file of what it must not forget (``what`` names it in the log), rewritten
    whole when what it records changed (the caller's ``version`` moved) or when asked;
    one write at a time, in a thread. A write that fails is logged and retried at the
    next save: the database stays the record, the file a second witness."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what
        self._written = -1  # the version last written (-1: nothing yet)
        self._lock = asyncio.Lock()
        self.writes = 0  # completed, for the tests

    async def save(self, version: int, render: Callable[[], bytes], *, force: bool = False) -> None:
        """Write ``render()`` unless ``version`` was written already (``force``: even so)."""
        if version == self._written and not force:
            return
        async with self._lock:
            if version == self._written and not force:
                return
            data = render()
            try:
                await asyncio.to_thread(replace_in_directory, self.path, data)
            except OSError as error:
                log.error("cannot write the %s %s: %s", self.what, self.path, error)
                return
            self._written = version
            self.writes += 1


def read_entries(path: Path, shape: FileShape[T], error: type[ValueError]) -> list[T]:
    """The entries of a node's file at ``path`` (:func:`parse_entries`); none when there is
    no file. ``error`` for a file that cannot be read or parsed, naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as failure:
        raise error(f"{path}: {failure.strerror or failure}") from None
    try:
        return parse_entries(data, shape, error)
    except ValueError as failure:
        raise error(f"{path}: {failure}") from None


def parse_entries(data: bytes, shape: FileShape[T], error: type[ValueError]) -> list[T]:
    """The entries of a JSON object whose ``format`` is ``shape.document``, each of the list
    under ``shape.key`` read by ``shape.entry`` (which raises ``error`` for one it refuses);
    ``error`` for anything else."""
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise error("not a JSON document") from None
    if not isinstance(parsed, dict) or parsed.get("format") != shape.document:
        raise error(f"not a {shape.what} (format {shape.document!r})")
    entries = parsed.get(shape.key)
    if not isinstance(entries, list):
        raise error(f"{shape.key} is not a list")
    return [shape.entry(position, entry) for position, entry in enumerate(entries)]


@dataclass(frozen=True, slots=True)
class FileShape(Generic[T]):
    """A node's JSON file: ``{"format": document, key: [entry, ...]}`` (a ``what``)."""

    document: str
    key: str
    what: str
    entry: Callable[[int, object], T]
