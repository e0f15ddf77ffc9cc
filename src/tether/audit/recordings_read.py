"""Reading recordings back: casts (whole or cut short by a crash), transfers, summaries.

A recording whose writer died has no gzip trailer and may end inside an event. The reader
decompresses what is there with a streaming zlib object, which — unlike :func:`gzip.open` —
hands back every byte it could decode before the data stopped, and then keeps the whole
lines: the events up to the crash. Such a cast is reported ``complete=False``, as is one
whose summary file is missing.

Everything read here was written by Tether, but a recording directory is also a place an
attacker with file access could plant data for an investigator's terminal: the reader checks
types and shapes and never evaluates anything; :mod:`tether.audit.recordings_play` strips
escape sequences when asked for text.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from tether.audit.recordings import (
    CAST_SUFFIX,
    SUMMARY_SUFFIX,
    TRANSFERS_SUFFIX,
    RecordingError,
    TransferRecord,
    check_session_id,
    session_of,
)

EVENT_CODES: Final = frozenset({"o", "i", "r", "m"})
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
_CHUNK: Final = 1 << 16
MAX_LINE: Final = 64 * 1024 * 1024  # a line of a cast read as a stream, at most


@dataclass(frozen=True, slots=True)
class CastEvent:
    """One asciicast v2 event: seconds since the start, code and data."""

    time: float
    code: str
    data: str


@dataclass(frozen=True, slots=True)
class Cast:
    """A parsed cast: its header, its events, and whether it ended cleanly."""

    header: dict[str, Any]
    events: list[CastEvent]
    complete: bool


@dataclass(frozen=True, slots=True)
class RecordedSession:
    """One recording on disk, as ``tether sessions`` lists it."""

    session_id: str
    started_at: datetime
    cast_path: Path
    header: dict[str, Any]
    summary: dict[str, Any] | None  # None: never closed (live, or its writer crashed)

    @property
    def state(self) -> str:
        return "complete" if self.summary is not None else "incomplete"

    @property
    def meta(self) -> dict[str, Any]:
        tether = self.header.get("tether")
        return dict(tether) if isinstance(tether, dict) else {}

    def transfers(self) -> list[TransferRecord]:
        path = self.cast_path.with_name(f"{self.session_id}{TRANSFERS_SUFFIX}")
        return read_transfers(path) if path.exists() else []


def gunzip_prefix(data: bytes) -> tuple[bytes, bool]:
    """The bytes a gzip stream decodes to, as far as it goes; True if it ended properly."""
    inflater = zlib.decompressobj(_GZIP_WBITS)
    out = bytearray()
    try:
        for start in range(0, len(data), _CHUNK):
            out += inflater.decompress(data[start : start + _CHUNK])
            if inflater.eof:
                break
    except zlib.error:
        return bytes(out), False
    return bytes(out), inflater.eof


def parse_cast(text: bytes, *, clean_end: bool = True) -> Cast:
    """A cast from its uncompressed bytes; stops at the first line that is not a whole event."""
    lines = text.split(b"\n")
    header = _parse_header(lines[0])
    events: list[CastEvent] = []
    complete = clean_end and text.endswith(b"\n")
    for line in lines[1:-1] if text.endswith(b"\n") else lines[1:]:
        if not line.strip():
            continue
        event = parse_event(line)
        if event is None:
            complete = False
            break
        events.append(event)
    return Cast(header, events, complete)


def _parse_header(line: bytes) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise RecordingError("not an asciicast: the first line is not a JSON header") from None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise RecordingError("not an asciicast v2 file")
    for key in ("width", "height"):
        if not _is_count(header.get(key)):
            raise RecordingError(f"asciicast header: {key} must be a positive integer")
    return header


def parse_event(line: bytes) -> CastEvent | None:
    """``[time, code, data]`` from one line, or None when the line is not such an event."""
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(value, list) or len(value) != 3:
        return None
    seconds, code, data = value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return None
    if not (0 <= seconds < float("inf")) or code not in EVENT_CODES or not isinstance(data, str):
        return None
    return CastEvent(float(seconds), code, data)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_cast(path: Path) -> Cast:
    """The cast in ``path`` (``.cast.gz`` or plain ``.cast``), whole in memory; tolerant of a
    cut-off end. :func:`stream_cast` reads it in constant memory."""
    stream = stream_cast(path)
    events = list(stream)
    return Cast(stream.header, events, stream.complete)


def stream_cast(path: Path) -> CastStream:
    """The cast in ``path`` read as it is iterated, in constant memory (a recording made
    without an output cap can be gigabytes); the header is read at once (RecordingError)."""
    return CastStream(path)


class CastStream:
    """A cast's header, then its events one at a time from the file, as :func:`parse_cast`
    reads them from the whole text: the same events, and ``complete`` once iterated (the
    gzip stream ended properly and the text ends with a whole line). Iterable once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.complete = False
        try:
            self._handle = path.open("rb")
        except OSError as error:
            raise RecordingError(f"cannot read {path}: {error.strerror or error}") from None
        self._lines = self._read_lines()
        first = next(self._lines, None)
        if first is None:
            self._handle.close()
            raise RecordingError(f"{path}: no readable data")
        self.header = _parse_header(first)

    @property
    def events(self) -> Iterator[CastEvent]:
        """The events, read as they are iterated (once)."""
        return iter(self)

    def __iter__(self) -> Iterator[CastEvent]:
        try:
            for line in self._lines:
                if not line.strip():
                    continue
                event = parse_event(line)
                if event is None:
                    self.complete = False
                    return
                yield event
        finally:
            self._handle.close()

    def _read_lines(self) -> Iterator[bytes]:
        """The text's lines (the last one maybe without its newline); sets ``complete``."""
        pending = b""
        ended = True
        for chunk, clean in self._chunks():
            ended = clean
            data = pending + chunk if pending else chunk
            lines = data.split(b"\n")
            pending = lines.pop()
            yield from lines
            if len(pending) > MAX_LINE:  # no event is this long: not a cast Tether wrote
                self.complete = False
                return
        self.complete = ended and not pending
        if pending:
            yield pending

    def _chunks(self) -> Iterator[tuple[bytes, bool]]:
        """Decoded chunks of the file, each with whether the data so far ended cleanly."""
        gzipped = self.path.name.endswith(".gz")
        inflater = zlib.decompressobj(_GZIP_WBITS) if gzipped else None
        try:
            while chunk := self._handle.read(_CHUNK):
                if inflater is None:
                    yield chunk, True
                    continue
                try:
                    data = inflater.decompress(chunk)
                except zlib.error:
                    yield b"", False
                    return
                yield data, inflater.eof
                if inflater.eof:
                    return
        except OSError as error:
            raise RecordingError(f"cannot read {self.path}: {error.strerror or error}") from None
        if inflater is not None and not inflater.eof:
            yield b"", False  # cut off (no gzip trailer): the writer stopped


def read_transfers(path: Path) -> list[TransferRecord]:
    """The transfer records in ``path``; a last line cut off by a crash is ignored."""
    records: list[TransferRecord] = []
    try:
        data = path.read_bytes()
    except OSError as error:
        raise RecordingError(f"cannot read {path}: {error.strerror or error}") from None
    for line in data.split(b"\n"):
        record = _parse_transfer(line)
        if record is not None:
            records.append(record)
    return records


def _parse_transfer(line: bytes) -> TransferRecord | None:
    try:
        value = json.loads(line)
        return TransferRecord(
            time=float(value["time"]),
            path=str(value["path"]),
            direction=value["direction"],
            size=int(value["size"]),
            sha256=str(value["sha256"]),
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def iter_recordings(root: Path) -> Iterator[RecordedSession]:
    """Every recording under ``root``, oldest day first (unreadable ones are skipped)."""
    if not root.is_dir():
        return
    for path in sorted(root.glob(f"[0-9]*/[0-9]*/[0-9]*/*{CAST_SUFFIX}")):
        try:
            yield load_recording(path)
        except RecordingError:
            continue


def find_recording(root: Path, session_id: str) -> RecordedSession:
    """The recording of ``session_id``; raises :class:`RecordingError` if there is none."""
    check_session_id(session_id)
    matches = sorted(root.glob(f"[0-9]*/[0-9]*/[0-9]*/{session_id}{CAST_SUFFIX}"))
    if not matches:
        # An SSH session's channels are recorded as <session>.<n>: name them.
        channels = sorted(
            path.name.removesuffix(CAST_SUFFIX)
            for path in root.glob(f"[0-9]*/[0-9]*/[0-9]*/{session_id}.*{CAST_SUFFIX}")
        )
        if channels:
            shown = ", ".join(channels[:10]) + (", ..." if len(channels) > 10 else "")
            raise RecordingError(
                f"session {session_id} is recorded per channel: show one of {shown}"
            )
        raise RecordingError(f"no recording of session {session_id}")
    return load_recording(matches[-1])


def session_transfers(root: Path, recording_id: str) -> list[TransferRecord]:
    """The transfer records of every recording of ``recording_id``'s session (its SSH
    channels are ``<session>.<n>``); :class:`RecordingError` if one cannot be read."""
    session_id = session_of(recording_id)
    check_session_id(session_id)
    found: list[TransferRecord] = []
    for pattern in (f"{session_id}{TRANSFERS_SUFFIX}", f"{session_id}.*{TRANSFERS_SUFFIX}"):
        for path in sorted(root.glob(f"[0-9]*/[0-9]*/[0-9]*/{pattern}")):
            found.extend(read_transfers(path))
    return found


def load_recording(cast_path: Path) -> RecordedSession:
    """A recording's header and summary (the events are read on demand by :func:`read_cast`)."""
    session_id = cast_path.name.removesuffix(CAST_SUFFIX)
    header = read_header(cast_path)
    summary_path = cast_path.with_name(f"{session_id}{SUMMARY_SUFFIX}")
    summary = _read_json_object(summary_path) if summary_path.exists() else None
    timestamp = header.get("timestamp")
    seconds = timestamp if isinstance(timestamp, int) and _is_count(timestamp) else 0
    try:
        started = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):  # a timestamp no date holds
        started = datetime.fromtimestamp(0, UTC)
    return RecordedSession(session_id, started, cast_path, header, summary)


def read_header(cast_path: Path) -> dict[str, Any]:
    """The header line of a ``.cast.gz``, decompressing only its first block or so."""
    inflater = zlib.decompressobj(_GZIP_WBITS)
    out = bytearray()
    try:
        with cast_path.open("rb") as handle:
            while b"\n" not in out and (chunk := handle.read(4096)):
                out += inflater.decompress(chunk)
    except (OSError, zlib.error) as error:
        raise RecordingError(f"cannot read {cast_path}: {error}") from None
    return _parse_header(bytes(out).split(b"\n", 1)[0])


def _read_json_object(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
